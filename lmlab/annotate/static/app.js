// lmlab annotate: a little progressive enhancement. Every page works without it.
(function () {
  "use strict";
  // character counters under text areas with a maxlength
  document.querySelectorAll("textarea[maxlength]").forEach(function (ta) {
    var c = document.createElement("span");
    c.className = "counter";
    ta.insertAdjacentElement("afterend", c);
    var upd = function () { c.textContent = ta.value.length + " / " + ta.maxLength; };
    ta.addEventListener("input", upd);
    upd();
  });
  // keep typed text in this browser until the form is sent (a reload or a lost connection loses nothing)
  document.querySelectorAll("form[data-autosave]").forEach(function (f) {
    var key = "lmlab-annotate:" + f.dataset.autosave;
    var fields = f.querySelectorAll("textarea");
    try {
      var saved = JSON.parse(localStorage.getItem(key) || "null");
      if (saved) fields.forEach(function (t) { if (!t.value && saved[t.name]) t.value = saved[t.name]; });
    } catch (e) { /* private mode: no storage */ }
    f.addEventListener("input", function () {
      var v = {};
      fields.forEach(function (t) { v[t.name] = t.value; });
      try { localStorage.setItem(key, JSON.stringify(v)); } catch (e) { /* ignore */ }
    });
    f.addEventListener("submit", function () {
      try { localStorage.removeItem(key); } catch (e) { /* ignore */ }
    });
  });
  // no double submission: disable the buttons of a form once it is sent (the server also de-duplicates)
  document.querySelectorAll("form[method=post]").forEach(function (f) {
    f.addEventListener("submit", function () {
      setTimeout(function () { f.querySelectorAll("button").forEach(function (x) { x.disabled = true; }); }, 0);
    });
  });
  // rating pages: keys 1-5 pick a score
  var stars = document.querySelectorAll(".stars input[name=score]");
  if (stars.length) {
    document.addEventListener("keydown", function (ev) {
      if (ev.target.tagName === "TEXTAREA" || ev.target.tagName === "INPUT" && ev.target.type !== "radio") return;
      var n = parseInt(ev.key, 10);
      if (n >= 1 && n <= 5) stars[n - 1].checked = true;
    });
  }
  // reject asks for confirmation
  document.querySelectorAll("button.danger").forEach(function (b) {
    b.addEventListener("click", function (ev) { if (!window.confirm("Reject this item?")) ev.preventDefault(); });
  });
  // click an invite link field to select it
  document.querySelectorAll("input[data-copy]").forEach(function (i) {
    i.addEventListener("focus", function () { i.select(); });
  });
})();
