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

  document.addEventListener("DOMContentLoaded", enablePhotoDrop);
})();
