// rfbench static leaderboard: sortable tables (progressive enhancement, keyboard-usable buttons, aria-sort)
// and a search box per table that hides the rows not containing every word typed
(function () {
  "use strict";
  function key(cell) {
    var v = cell.getAttribute("data-sort");
    if (v === null) { v = cell.textContent.trim(); }
    var n = Number(v);
    return { num: v.trim() !== "" && isFinite(n) ? n : null, text: v.toLowerCase() };
  }
  function compare(a, b) {
    if (a.num !== null && b.num !== null) { return a.num - b.num; }
    if (a.num !== null) { return -1; }
    if (b.num !== null) { return 1; }
    return a.text < b.text ? -1 : a.text > b.text ? 1 : 0;
  }
  function sortBy(table, th, col, dir) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var keyed = rows.map(function (row, i) { return { row: row, key: key(row.cells[col]), i: i }; });
    keyed.sort(function (a, b) { var c = compare(a.key, b.key); return (dir === "ascending" ? c : -c) || a.i - b.i; });
    keyed.forEach(function (k) { body.appendChild(k.row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) {
      if (h.hasAttribute("aria-sort")) { h.setAttribute("aria-sort", "none"); }
    });
    th.setAttribute("aria-sort", dir);
    table.classList.toggle("ungrouped", col !== 0 || dir !== "ascending");
    var live = document.getElementById(table.id + "-status");
    if (live) { live.textContent = "Sorted by " + th.textContent.trim() + ", " + dir + "."; }
  }
  function filter(input) {
    var table = document.getElementById(input.getAttribute("data-filter"));
    if (!table) { return; }
    var words = input.value.toLowerCase().split(/\s+/).filter(function (w) { return w !== ""; });
    var rows = table.tBodies[0].rows, shown = 0;
    Array.prototype.forEach.call(rows, function (row) {
      var text = row.textContent.toLowerCase();
      var hit = words.every(function (w) { return text.indexOf(w) !== -1; });
      row.hidden = !hit;
      if (hit) { shown += 1; }
    });
    var live = document.getElementById(table.id + "-status");
    if (live) { live.textContent = shown + " of " + rows.length + " rows shown."; }
  }
  Array.prototype.forEach.call(document.querySelectorAll("input[data-filter]"), function (input) {
    input.addEventListener("input", function () { filter(input); });
  });
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      if (!th.hasAttribute("data-sortable")) { return; }
      if (!th.hasAttribute("aria-sort")) { th.setAttribute("aria-sort", "none"); }
      var button = document.createElement("button");
      button.type = "button";
      button.className = "sort";
      while (th.firstChild) { button.appendChild(th.firstChild); }
      th.appendChild(button);
      button.addEventListener("click", function () {
        var now = th.getAttribute("aria-sort");
        var first = th.getAttribute("data-sortable") || "ascending";
        var dir = now === "none" ? first : (now === "ascending" ? "descending" : "ascending");
        sortBy(table, th, col, dir);
      });
    });
  });
})();
