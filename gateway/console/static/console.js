// The console's few lines of script: keyboard shortcuts of the review form.
// Every page works without it; forms post as plain HTML forms.
"use strict";
document.addEventListener("keydown", (event) => {
  const form = document.querySelector("form[data-review]");
  if (!form || event.altKey || event.isComposing) return;
  const box = form.querySelector("textarea");
  const typing = event.target instanceof HTMLTextAreaElement || event.target instanceof HTMLInputElement;
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    form.querySelector('button[value="save"]').click();
    return;
  }
  if (typing) {
    if (event.key === "Escape") event.target.blur();
    return;
  }
  if (event.ctrlKey || event.metaKey) return;
  if (event.key === "e") { event.preventDefault(); box.focus(); return; }
  const button = form.querySelector(`button[data-key="${event.key}"]`);
  if (button && event.key.length === 1) { event.preventDefault(); button.click(); }
});
