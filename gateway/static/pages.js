/*
 * Small behaviours of the customer's pages; every page also works without this script.
 *
 * - Forms marked `data-issuing` (certificate acquisition and renewal) show the issuing
 *   screen "証明書発行中" (§2.1(3), §2.10.1(4)) while their POST runs, and cannot be sent
 *   twice. Coming back with the browser's Back button shows the form again.
 * - The download form (`data-download`) is used once: after the click its button is
 *   disabled, reads "ダウンロード済み", and a note says the file was downloaded (§2.1(5)).
 * - An error summary (`role="alert"` with tabindex) takes the focus, so keyboard and screen
 *   reader users start where the problem is explained.
 * No inline code and no external resources: the pages run under `default-src 'self'`.
 */
(function () {
  "use strict";

  function showIssuing(form) {
    var page = document.getElementById("issuing-form-page");
    var issuing = document.getElementById("issuing");
    if (!page || !issuing) { return; }
    page.hidden = true;
    issuing.hidden = false;
    var heading = document.getElementById("issuing-heading");
    if (heading) {
      heading.setAttribute("tabindex", "-1");
      heading.focus();
    }
    form.setAttribute("data-sent", "true");
  }

  function resetIssuing() {
    var page = document.getElementById("issuing-form-page");
    var issuing = document.getElementById("issuing");
    if (page) { page.hidden = false; }
    if (issuing) { issuing.hidden = true; }
    Array.prototype.forEach.call(document.querySelectorAll("form[data-sent]"), function (form) {
      form.removeAttribute("data-sent");
    });
  }

  function init() {
    Array.prototype.forEach.call(document.querySelectorAll("form[data-issuing]"), function (form) {
      form.addEventListener("submit", function (event) {
        if (form.getAttribute("data-sent") === "true") {
          event.preventDefault();
          return;
        }
        showIssuing(form);
      });
    });

    Array.prototype.forEach.call(document.querySelectorAll("form[data-download]"), function (form) {
      form.addEventListener("submit", function (event) {
        // One use only (the server hands the file over once): after the click the button
        // is disabled and says so, instead of leading to a "nothing to download" page.
        var button = form.querySelector("button[type=submit]");
        if (form.getAttribute("data-sent") === "true") {
          event.preventDefault();
          return;
        }
        form.setAttribute("data-sent", "true");
        window.setTimeout(function () {
          if (button) {
            button.disabled = true;
            button.setAttribute("aria-disabled", "true");
            if (button.getAttribute("data-done")) { button.textContent = button.getAttribute("data-done"); }
          }
          var note = document.getElementById("download-started");
          if (note) { note.hidden = false; }
        }, 0);
      });
    });

    var summary = document.querySelector("[role=alert][tabindex]");
    if (summary) { summary.focus(); }
  }

  // Back/forward cache: a page restored after the POST must show its form again.
  window.addEventListener("pageshow", function (event) {
    if (event.persisted) { resetIssuing(); }
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
