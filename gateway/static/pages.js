/*
 * Small behaviours of the customer's pages; every page also works without this script.
 *
 * - Forms marked `data-issuing` (certificate acquisition and renewal) show the issuing
 *   screen "証明書発行中" (§2.1(3), §2.10.1(4)) while their POST runs, and cannot be sent
 *   twice. Coming back with the browser's Back button shows the form again.
 * - The download form (`data-download`) says that the download started (§2.1(5)).
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
      form.addEventListener("submit", function () {
        var note = document.getElementById("download-started");
        if (note) { note.hidden = false; }
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
