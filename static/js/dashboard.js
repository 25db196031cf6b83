// The shopper dashboard's charts: Chart.js (static/vendor/chart.umd.min.js) over the figures the page
// carries in <script id="dashboard-data" type="application/json">. Draws on load, and again when htmx
// swaps in content holding canvases (htmx:load), so it works on pages htmx updates too.
(function () {
  "use strict";
  function draw(root) {
    var source = document.getElementById("dashboard-data");
    if (!source || typeof Chart === "undefined") return;
    var data = JSON.parse(source.textContent);
    root.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      if (canvas.dataset.drawn) return;
      var figures = data[canvas.dataset.chart];
      if (!figures) return;
      canvas.dataset.drawn = "1";
      new Chart(canvas, {
        type: canvas.dataset.type || "bar",
        data: {
          labels: figures.labels,
          datasets: [{ label: canvas.dataset.label || "", data: figures.values, backgroundColor: "#417690", borderColor: "#417690" }],
        },
        options: { animation: false, responsive: true, plugins: { legend: { display: false } }, scales: { y: { beginAtZero: true } } },
      });
    });
  }
  document.addEventListener("DOMContentLoaded", function () { draw(document); });
  document.addEventListener("htmx:load", function (event) { draw(event.target || document); });
})();
