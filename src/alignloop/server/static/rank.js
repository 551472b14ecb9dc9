// The labeling page: fetch a task, let the labeler rank its responses by dragging
// or by keyboard (digits; the same digit twice is a tie), submit one ranking per
// criterion, then fetch the next task.
//
// Everything the server sends is untrusted model output: it only ever goes into the
// page through textContent, never innerHTML.
"use strict";

(function () {
  const root = document.getElementById("labeling");
  if (!root) return;
  const project = root.dataset.project;
  const csrf = root.dataset.csrf;
  const guidelinesUrl = root.dataset.guidelinesUrl;
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  };

  let task = null; // the task as GET /api/v1/tasks/next returned it
  let todo = []; // criteria still to rank for this task
  let step = 0; // index into todo
  let rankOf = new Map(); // completion id -> rank (0: not ranked yet)
  let cards = new Map(); // completion id -> card element
  let busy = false;

  function say(text, kind) {
    const box = $("message");
    box.textContent = text;
    box.className = "message " + (kind || "info");
    box.hidden = !text;
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = csrf;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    return fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  }

  // A POST that is safe to repeat (the server stores a ranking once): retried on a
  // network failure, with the very same body.
  async function postWithRetry(path, body) {
    let wait = 500;
    for (let attempt = 1; ; attempt++) {
      try {
        return await api("POST", path, body);
      } catch (err) {
        if (attempt >= 6) throw err;
        say("Connection lost; retrying…", "warn");
        await new Promise((resolve) => setTimeout(resolve, wait));
        wait *= 2;
      }
    }
  }

  function problems(payload) {
    const detail = payload && payload.detail;
    if (Array.isArray(detail)) return detail.map((d) => d.msg).join("; ");
    return typeof detail === "string" ? detail : "unexpected answer from the server";
  }

  async function loadNext() {
    say("");
    $("task").hidden = true;
    const response = await api("GET", "/api/v1/tasks/next?project=" + encodeURIComponent(project));
    if (response.status === 401) {
      window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
      return;
    }
    if (response.status === 409) {
      window.location.assign(guidelinesUrl);
      return;
    }
    if (response.status === 204) {
      $("done").hidden = false;
      $("progress").textContent = "";
      return;
    }
    if (!response.ok) {
      say(problems(await response.json().catch(() => null)), "error");
      return;
    }
    showTask(await response.json());
  }

  function showTask(t) {
    task = t;
    todo = t.criteria.filter((c) => !t.ranked_criteria.includes(c));
    step = 0;
    if (todo.length === 0) {
      loadNext();
      return;
    }
    const p = t.progress;
    $("progress").textContent =
      "You have finished " + p.labeler_done + (p.labeler_done === 1 ? " task" : " tasks") +
      " · the project has " + p.project_complete_prompts + " of " + p.project_prompts +
      " prompts complete";
    $("prompt").textContent = t.prompt;
    buildBoard();
    startCriterion();
    $("task").hidden = false;
    const first = cards.values().next().value;
    if (first) first.focus();
  }

  function buildBoard() {
    const k = task.completions.length;
    const ranks = $("ranks");
    ranks.replaceChildren();
    // The previous task's cards go too, wherever they are (an unranked one is still
    // in the pool after a skip or an "I cannot rank these").
    $("pool").querySelector(".cards").replaceChildren();
    for (let r = 1; r <= k; r++) {
      const row = el("li", "rank dropzone");
      row.dataset.rank = String(r);
      row.append(el("h3", null, r === 1 ? "1 · best" : r === k ? r + " · worst" : String(r)));
      row.append(el("div", "cards"));
      makeDropzone(row);
      ranks.append(row);
    }
    cards = new Map();
    task.completions.forEach((c, i) => {
      const card = el("article", "completion");
      card.tabIndex = 0;
      card.draggable = true;
      card.dataset.id = c.id;
      const head = el("header");
      head.append(el("strong", null, "Response " + String.fromCharCode(65 + i)));
      head.append(el("span", "badge", "not ranked"));
      card.append(head, el("div", "text", c.text));
      card.addEventListener("keydown", onKey);
      card.addEventListener("dragstart", (e) => {
        e.dataTransfer.setData("text/plain", c.id);
        e.dataTransfer.effectAllowed = "move";
        card.classList.add("dragging");
      });
      card.addEventListener("dragend", () => card.classList.remove("dragging"));
      cards.set(c.id, card);
    });
  }

  function makeDropzone(zone) {
    zone.addEventListener("dragover", (e) => {
      e.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      const id = e.dataTransfer.getData("text/plain");
      if (cards.has(id)) setRank(id, Number(zone.dataset.rank));
    });
  }

  function startCriterion() {
    rankOf = new Map(task.completions.map((c) => [c.id, 0]));
    $("criterion").textContent = todo[step];
    $("criterion-step").textContent =
      todo.length > 1 ? "(criterion " + (step + 1) + " of " + todo.length + ")" : "";
    $("unrankable").checked = false;
    $("unsafe").checked = false;
    $("rationale").value = "";
    place();
  }

  function zoneFor(rank) {
    if (rank === 0) return $("pool").querySelector(".cards");
    return $("ranks").querySelector('[data-rank="' + rank + '"] .cards');
  }

  // Put every card in the zone of its rank, keeping the shuffled order within a zone.
  function place() {
    const focused = document.activeElement;
    task.completions.forEach((c) => {
      const card = cards.get(c.id);
      const rank = rankOf.get(c.id);
      zoneFor(rank).append(card);
      card.querySelector(".badge").textContent = rank === 0 ? "not ranked" : "rank " + rank;
      card.classList.toggle("ranked", rank > 0);
    });
    if (focused && focused.classList && focused.classList.contains("completion")) focused.focus();
    updateSubmit();
  }

  function setRank(id, rank) {
    rankOf.set(id, rank);
    place();
  }

  function onKey(e) {
    if (e.altKey || e.ctrlKey || e.metaKey) return;
    if (!/^[0-9]$/.test(e.key)) return;
    const rank = Number(e.key);
    if (rank > task.completions.length) return;
    e.preventDefault();
    setRank(e.currentTarget.dataset.id, rank);
  }

  function allRanked() {
    return [...rankOf.values()].every((r) => r > 0);
  }

  function updateSubmit() {
    $("submit").disabled = busy || !($("unrankable").checked || allRanked());
  }

  // Groups of ids, best first; ranks nobody used are left out (1, 1, 3 is a tie for
  // first, then the third).
  function groups() {
    const out = [];
    for (let r = 1; r <= task.completions.length; r++) {
      const ids = task.completions.map((c) => c.id).filter((id) => rankOf.get(id) === r);
      if (ids.length) out.push(ids);
    }
    return out;
  }

  async function submit() {
    if (busy) return;
    busy = true;
    updateSubmit();
    const unrankable = $("unrankable").checked;
    const body = {
      criterion: todo[step],
      ranking: unrankable ? [] : groups(),
      unrankable,
      rationale: $("rationale").value,
      flag_unsafe: $("unsafe").checked,
    };
    try {
      const response = await postWithRetry(
        "/api/v1/assignments/" + task.assignment_id + "/ranking", body);
      const payload = await response.json().catch(() => null);
      if (response.status === 200 || response.status === 201) {
        step += 1;
        if (step < todo.length) {
          say("Saved. Now rank the same responses by " + todo[step] + ".", "ok");
          startCriterion();
        } else {
          await loadNext();
          say("Saved.", "ok");
        }
      } else if (response.status === 409) {
        say(problems(payload) + " Loading the next task…", "warn");
        await loadNext();
      } else {
        say(problems(payload), "error");
      }
    } catch (err) {
      say("Could not reach the server; your ranking is still here, submit again.", "error");
    } finally {
      busy = false;
      updateSubmit();
    }
  }

  async function skip() {
    if (busy || !task) return;
    busy = true;
    try {
      const response = await postWithRetry("/api/v1/assignments/" + task.assignment_id + "/skip");
      if (!response.ok) {
        say(problems(await response.json().catch(() => null)), "error");
      } else {
        await loadNext();
      }
    } finally {
      busy = false;
      updateSubmit();
    }
  }

  makeDropzone($("pool"));
  $("submit").addEventListener("click", submit);
  $("skip").addEventListener("click", skip);
  $("unrankable").addEventListener("change", updateSubmit);
  loadNext().catch(() => say("Could not reach the server; reload the page.", "error"));
})();
