// Progressive enhancement only: every control works as a plain link or form without this file.
(function () {
  "use strict";

  // Dropping an image on the photo box picks it and submits the form.
  function enablePhotoDrop() {
    const form = document.getElementById("photo-search");
    if (!form) return;
    const input = form.querySelector('input[type="file"]');
    const zone = form.querySelector(".drop");
    ["dragenter", "dragover"].forEach((type) =>
      zone.addEventListener(type, (event) => {
        event.preventDefault();
        zone.classList.add("over");
      })
    );
    ["dragleave", "drop"].forEach((type) => zone.addEventListener(type, () => zone.classList.remove("over")));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      if (!event.dataTransfer.files.length) return;
      input.files = event.dataTransfer.files;
      form.requestSubmit();
    });
    input.addEventListener("change", () => {
      if (input.files.length) form.requestSubmit();
    });
  }

  // A photo search sent by htmx keeps the filters the shopper has picked since the page loaded.
  document.addEventListener("htmx:configRequest", (event) => {
    if (event.target.id !== "photo-search") return;
    document.querySelectorAll("#results .filters select").forEach((select) => {
      event.detail.parameters[select.name] = select.value;
    });
  });

  document.addEventListener("DOMContentLoaded", enablePhotoDrop);
})();
