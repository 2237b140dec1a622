/*
 * Software keyboard for password fields (manual §2.4, R-UI-3).
 *
 * Markup contract (rendered by the templates, strings from the message catalogue):
 *   <input type="password" id="password" ...>
 *   <button type="button" class="sk-open" data-keyboard-for="password" hidden>ソフトウェアキーボードを開く</button>
 *   (rendered `hidden`; this script shows the buttons it can serve)
 *   <body data-sk-title="..." data-sk-confirm="確定" data-sk-cancel="キャンセル"
 *         data-sk-shift="..." data-sk-backspace="..." data-sk-clear="..." data-sk-entered="...">
 *
 * The dialog holds its own buffer: [確定] copies it into the field, [キャンセル] (or Escape)
 * discards it (§2.4(2)). Every key is a <button>, so mouse, touch and the keyboard (Tab,
 * Enter/Space) all work; focus stays inside the dialog while it is open and returns to the
 * opener afterwards. Typing into the field directly still works. No external code, no inline
 * handlers (the pages run under a strict Content-Security-Policy).
 */
(function () {
  "use strict";

  var ROWS = [
    "1234567890",
    "qwertyuiop",
    "asdfghjkl",
    "zxcvbnm",
  ];
  var SYMBOLS = "-_.@#!?*+/";

  function label(name, fallback) {
    return document.body.getAttribute("data-sk-" + name) || fallback;
  }

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function SoftwareKeyboard(field, opener) {
    this.field = field;
    this.opener = opener;
    this.buffer = "";
    this.upper = false;
    this.build();
  }

  SoftwareKeyboard.prototype.build = function () {
    var self = this;
    var titleId = "sk-title-" + this.field.id;
    this.backdrop = el("div", { "class": "sk-backdrop" });
    this.dialog = el("div", {
      "class": "sk-dialog", role: "dialog", "aria-modal": "true", "aria-labelledby": titleId,
      "data-testid": "software-keyboard",
    });
    var title = el("h2", { id: titleId, "class": "sk-title" }, label("title", "Software Keyboard"));
    // Which field the keys are for (the change page has three password fields).
    var fieldLabel = document.querySelector('label[for="' + this.field.id + '"]');
    if (fieldLabel) { title.appendChild(el("span", { "class": "sk-for" }, fieldLabel.textContent)); }
    this.dialog.appendChild(title);
    this.display = el("output", { "class": "sk-display", "aria-live": "polite", "data-testid": "sk-display" });
    this.dialog.appendChild(this.display);

    this.letterButtons = [];
    ROWS.concat([SYMBOLS]).forEach(function (row) {
      var line = el("div", { "class": "sk-row" });
      row.split("").forEach(function (ch) {
        var key = el("button", { type: "button", "class": "sk-key", "data-key": ch }, ch);
        key.addEventListener("click", function () { self.press(key.getAttribute("data-key")); });
        if (/[a-z]/.test(ch)) { self.letterButtons.push(key); }
        line.appendChild(key);
      });
      self.dialog.appendChild(line);
    });

    var controls = el("div", { "class": "sk-row sk-controls" });
    this.shiftButton = el("button", { type: "button", "class": "sk-key sk-wide", "aria-pressed": "false", "data-action": "shift" }, label("shift", "Shift"));
    this.shiftButton.addEventListener("click", function () { self.toggleShift(); });
    var back = el("button", { type: "button", "class": "sk-key sk-wide", "data-action": "backspace" }, label("backspace", "Back"));
    back.addEventListener("click", function () { self.buffer = self.buffer.slice(0, -1); self.render(); });
    var clear = el("button", { type: "button", "class": "sk-key sk-wide", "data-action": "clear" }, label("clear", "Clear"));
    clear.addEventListener("click", function () { self.buffer = ""; self.render(); });
    [this.shiftButton, back, clear].forEach(function (node) { controls.appendChild(node); });
    this.dialog.appendChild(controls);

    var actions = el("div", { "class": "sk-actions" });
    var confirm = el("button", { type: "button", "class": "button primary", "data-action": "confirm" }, label("confirm", "OK"));
    confirm.addEventListener("click", function () { self.confirm(); });
    var cancel = el("button", { type: "button", "class": "button", "data-action": "cancel" }, label("cancel", "Cancel"));
    cancel.addEventListener("click", function () { self.close(); });
    actions.appendChild(confirm);
    actions.appendChild(cancel);
    this.dialog.appendChild(actions);

    this.dialog.addEventListener("keydown", function (event) { self.onKeydown(event); });
    this.backdrop.appendChild(this.dialog);
  };

  SoftwareKeyboard.prototype.press = function (ch) {
    if (this.buffer.length >= 64) { return; }
    this.buffer += this.upper && /[a-z]/.test(ch) ? ch.toUpperCase() : ch;
    this.render();
  };

  SoftwareKeyboard.prototype.toggleShift = function () {
    var self = this;
    this.upper = !this.upper;
    this.shiftButton.setAttribute("aria-pressed", this.upper ? "true" : "false");
    this.letterButtons.forEach(function (key) {
      var ch = key.getAttribute("data-key");
      key.textContent = self.upper ? ch.toUpperCase() : ch;
    });
  };

  SoftwareKeyboard.prototype.render = function () {
    // Never show the characters: one mark per character, as the password field does.
    this.display.textContent = this.buffer.replace(/./g, "\u25cf");
    this.display.setAttribute("aria-label", label("entered", "Characters entered") + ": " + this.buffer.length);
  };

  SoftwareKeyboard.prototype.open = function () {
    this.buffer = "";
    this.render();
    document.body.appendChild(this.backdrop);
    var first = this.dialog.querySelector(".sk-key");
    if (first) { first.focus(); }
  };

  SoftwareKeyboard.prototype.confirm = function () {
    this.field.value = this.buffer;
    this.field.dispatchEvent(new Event("input", { bubbles: true }));
    this.close();
  };

  SoftwareKeyboard.prototype.close = function () {
    this.buffer = "";
    if (this.backdrop.parentNode) { this.backdrop.parentNode.removeChild(this.backdrop); }
    this.opener.focus();
  };

  SoftwareKeyboard.prototype.onKeydown = function (event) {
    if (event.key === "Escape") {
      event.preventDefault();
      this.close();
      return;
    }
    if (event.key !== "Tab") { return; }
    var focusable = this.dialog.querySelectorAll("button");
    var first = focusable[0];
    var last = focusable[focusable.length - 1];
    if (event.shiftKey && document.activeElement === first) {
      event.preventDefault();
      last.focus();
    } else if (!event.shiftKey && document.activeElement === last) {
      event.preventDefault();
      first.focus();
    }
  };

  function init() {
    var openers = document.querySelectorAll("[data-keyboard-for]");
    Array.prototype.forEach.call(openers, function (opener) {
      var field = document.getElementById(opener.getAttribute("data-keyboard-for"));
      if (!field) { return; }
      opener.hidden = false;  // rendered hidden: without this script the button would do nothing
      var keyboard = null;
      opener.addEventListener("click", function () {
        keyboard = keyboard || new SoftwareKeyboard(field, opener);
        keyboard.open();
      });
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
