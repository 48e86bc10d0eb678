(function () {
  var box = document.getElementById("group-filter");
  var count = document.getElementById("group-filter-count");
  var groups = document.querySelectorAll(".group");
  if (box) {
    box.addEventListener("input", function () {
      var q = box.value.toLowerCase(), n = 0;
      for (var i = 0; i < groups.length; i++) {
        var hit = !q || (groups[i].getAttribute("data-search") || "").indexOf(q) >= 0;
        groups[i].style.display = hit ? "" : "none";
        if (hit) n++;
      }
      if (count) count.textContent = q ? n + " of " + groups.length + " groups match" : "";
    });
  }
  document.documentElement.setAttribute("data-report-groups", String(groups.length));
  document.documentElement.setAttribute("data-report-state", "ready");
})();
