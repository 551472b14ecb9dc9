// The labeling page: fetch a task, let the labeler rank its responses, submit one
// ranking per criterion, then fetch the next task.
//
// The board: the responses stay side by side in their order (Response A, B, ...);
// above them a strip of rank slots ("not ranked", 1 · best, ..., K · worst) shows
// each response's letter in its slot. A response gets a rank by a digit while it has
// the focus, by its rank buttons, or by dragging it (or its letter) to a slot:
// pointer events, so a mouse, a pen and a finger (by the grip) drag the same way.
//
// Everything the server sends is untrusted: model output only ever goes into the
// page through textContent; a prompt's Markdown is built as elements whose text is
// set with textContent too (no innerHTML anywhere).
//
// The interface's words come from the catalogue in <script id="i18n"
// type="application/json"> (alignloop/server/i18n/*.json), the keys under "js.".
"use strict";

(function () {
  const root = document.getElementById("labeling");
  if (!root) return;
  const project = root.dataset.project;
  const csrf = root.dataset.csrf;
  const guidelinesUrl = root.dataset.guidelinesUrl;
  // A personal project ("my own preferences"): every prompt is the labeler's own to
  // rank, nobody else gets a skipped one, and the progress counts their own rankings.
  const personal = root.dataset.personal === "1";
  const draftPrefix = "alignloop.draft." + root.dataset.labeler + ".";
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const strings = (() => {
    const node = $("i18n");
    try {
      return node ? JSON.parse(node.textContent) : {};
    } catch (err) {
      return {};
    }
  })();
  // t("js.rank_n", {n: 2}) -> "rank 2": the catalogue's text with {name}s filled in.
  const t = (key, params) =>
    (strings[key] || key).replace(/\{(\w+)\}/g, (m, name) =>
      params && name in params ? String(params[name]) : m);

  let task = null; // the task as GET /api/v1/tasks/next returned it
  let todo = []; // criteria still to rank for this task
  let step = 0; // index into todo
  let rankOf = new Map(); // completion id -> rank (0: not ranked yet)
  let cards = new Map(); // completion id -> card element
  let chips = new Map(); // completion id -> its letter in the strip
  let letterOf = new Map(); // completion id -> "A", "B", ...
  let busy = false;
  let lastCard = null; // the card that last had the focus (Escape goes back to it)
  // Changing the last ranked task: GET /api/v1/rankings/last's answer, or null. Its
  // criteria are stepped through like a task's, each one sent with PUT.
  let editing = null;

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
        say(t("js.retrying"), "warn");
        await new Promise((resolve) => setTimeout(resolve, wait));
        wait *= 2;
      }
    }
  }

  function problems(payload) {
    const detail = payload && payload.detail;
    if (Array.isArray(detail)) return detail.map((d) => d.msg).join("; ");
    return typeof detail === "string" ? detail : t("js.unexpected");
  }

  // --- Markdown of a prompt, as elements (headings, lists, quotes, code, emphasis) --

  function inline(parent, text) {
    // `code`, **strong** / __strong__, *em* / _em_; a link shows its text and address.
    const pattern = /`([^`]+)`|\*\*(.+?)\*\*|__(.+?)__|\*([^*\s](?:[^*]*[^*\s])?)\*|(?<![\w])_([^_\s](?:[^_]*[^_\s])?)_(?![\w])|\[([^\]]+)\]\(([^)\s]+)\)/g;
    let at = 0;
    for (const m of text.matchAll(pattern)) {
      if (m.index > at) parent.append(text.slice(at, m.index));
      if (m[1] !== undefined) parent.append(el("code", null, m[1]));
      else if (m[2] !== undefined || m[3] !== undefined) {
        const strong = el("strong");
        inline(strong, m[2] !== undefined ? m[2] : m[3]);
        parent.append(strong);
      } else if (m[4] !== undefined || m[5] !== undefined) {
        const em = el("em");
        inline(em, m[4] !== undefined ? m[4] : m[5]);
        parent.append(em);
      } else parent.append(m[6] + " (" + m[7] + ")");
      at = m.index + m[0].length;
    }
    if (at < text.length) parent.append(text.slice(at));
  }

  function markdown(container, source) {
    container.replaceChildren();
    const lines = source.replace(/\r\n?/g, "\n").split("\n");
    let para = null; // the paragraph being filled
    let list = null; // the list being filled
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      let m;
      if (/^\s*```/.test(line)) {
        const code = [];
        while (++i < lines.length && !/^\s*```/.test(lines[i])) code.push(lines[i]);
        const pre = el("pre");
        pre.append(el("code", null, code.join("\n")));
        container.append(pre);
        para = list = null;
      } else if (!line.trim()) {
        para = list = null;
      } else if ((m = /^(#{1,6})\s+(.*)$/.exec(line))) {
        const h = el("h" + Math.min(m[1].length + 2, 6));
        inline(h, m[2]);
        container.append(h);
        para = list = null;
      } else if ((m = /^\s*(?:([-*+])|(\d+)[.)])\s+(.*)$/.exec(line))) {
        const kind = m[1] ? "UL" : "OL";
        if (!list || list.tagName !== kind) {
          list = el(kind.toLowerCase());
          container.append(list);
        }
        const li = el("li");
        inline(li, m[3]);
        list.append(li);
        para = null;
      } else if ((m = /^\s*>\s?(.*)$/.exec(line))) {
        const quote = el("blockquote");
        inline(quote, m[1]);
        container.append(quote);
        para = list = null;
      } else {
        if (!para) {
          para = el("p");
          container.append(para);
        } else para.append(el("br"));
        inline(para, line);
        list = null;
      }
    }
  }

  // A text prompt as Markdown; a conversation as its turns, in order, each under its
  // role's name (the role is one of the schema's four; the content is Markdown too).
  const roleNames = {
    system: t("js.role_system"),
    user: t("js.role_user"),
    assistant: t("js.role_assistant"),
    tool: t("js.role_tool"),
  };

  function showPrompt() {
    const box = $("prompt");
    if (!Array.isArray(task.messages)) {
      box.classList.remove("conversation");
      markdown(box, task.prompt);
      return;
    }
    box.replaceChildren();
    box.classList.add("conversation");
    for (const m of task.messages) {
      const known = Object.hasOwn(roleNames, m.role);
      const turn = el("section", known ? "turn turn-" + m.role : "turn");
      const content = el("div", "turn-content");
      markdown(content, String(m.content));
      turn.append(el("h3", "turn-role", known ? roleNames[m.role] : String(m.role)), content);
      box.append(turn);
    }
  }

  // --- tasks ----------------------------------------------------------------------

  async function loadNext() {
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
      clearBoard();
      task = null;
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

  function showProgress() {
    const p = task.progress;
    if (personal) {
      $("progress").textContent = t("js.progress_personal", {
        done: p.labeler_done,
        total: p.project_prompts,
      });
      return;
    }
    $("progress").textContent = t("js.progress", {
      done: p.labeler_done,
      tasks: t(p.labeler_done === 1 ? "js.task_one" : "js.task_many"),
      project_done: p.project_tasks_done,
      project_total: p.project_tasks,
    });
  }

  function showTask(next) {
    editing = null;
    $("edit-banner").hidden = true;
    $("skip").hidden = false;
    task = next;
    todo = task.criteria.filter((c) => !task.ranked_criteria.includes(c));
    step = 0;
    if (todo.length === 0) {
      loadNext();
      return;
    }
    showProgress();
    showPrompt();
    buildBoard();
    startCriterion();
    $("task").hidden = false;
    // A new prompt is read from its top (a phone had scrolled down to Submit); the
    // focus waits on the first response without scrolling past the prompt.
    window.scrollTo(0, 0);
    cards.values().next().value.focus({ preventScroll: true });
  }

  function clearBoard() {
    $("ranks").replaceChildren();
    $("cards").replaceChildren();
    $("pool").querySelector(".chips").replaceChildren();
    cards = new Map();
    chips = new Map();
  }

  // A new board for the task: K slots, K cards, K letters; nothing of the last task
  // stays behind.
  function buildBoard() {
    clearBoard();
    const k = task.completions.length;
    for (let r = 1; r <= k; r++) {
      const zone = el("li", "zone rank");
      zone.dataset.rank = String(r);
      const name = r === 1 ? t("js.best", { n: r }) : r === k ? t("js.worst", { n: r }) : String(r);
      zone.append(el("h3", null, name), el("div", "chips"));
      $("ranks").append(zone);
    }
    $("cards").style.setProperty("--cols", String(k <= 5 ? k : Math.ceil(k / 2)));
    letterOf = new Map(task.completions.map((c, i) => [c.id, String.fromCharCode(65 + i)]));
    task.completions.forEach((c) => {
      const letter = letterOf.get(c.id);
      const card = el("article", "completion");
      card.tabIndex = 0;
      card.dataset.id = c.id;
      const head = el("header");
      const grip = el("span", "grip", "⠿");
      grip.title = t("js.drag", { letter });
      grip.setAttribute("aria-hidden", "true");
      head.append(grip, el("strong", null, t("js.response", { letter })), el("span", "badge"));
      const buttons = el("div", "rank-buttons");
      for (let r = 1; r <= k; r++) {
        const b = el("button", "rank-button", String(r));
        b.type = "button";
        b.tabIndex = -1; // the keyboard ranks with digits on the card itself
        b.dataset.rank = String(r);
        b.setAttribute("aria-label", t("js.give_rank", { letter, n: r }));
        b.addEventListener("click", () => {
          setRank(c.id, rankOf.get(c.id) === r ? 0 : r);
          card.focus();
        });
        buttons.append(b);
      }
      card.append(head, el("div", "text", c.text), buttons);
      card.addEventListener("keydown", onCardKey);
      card.addEventListener("focus", () => (lastCard = card));
      draggable(card, c.id);
      cards.set(c.id, card);
      $("cards").append(card);

      const chip = el("span", "chip", letter);
      chip.dataset.id = c.id;
      chip.title = t("js.response", { letter });
      draggable(chip, c.id);
      chips.set(c.id, chip);
    });
  }

  function draftKey() {
    return draftPrefix + task.assignment_id + "." + todo[step];
  }

  function saveDraft() {
    if (editing) return; // a change of a stored ranking is not kept over a reload
    const draft = {
      ranks: Object.fromEntries(rankOf),
      unrankable: $("unrankable").checked,
      unsafe: $("unsafe").checked,
      rationale: $("rationale").value,
      saved: Date.now(),
    };
    const empty = !draft.unrankable && !draft.unsafe && !draft.rationale &&
      [...rankOf.values()].every((r) => r === 0);
    try {
      if (empty) localStorage.removeItem(draftKey());
      else localStorage.setItem(draftKey(), JSON.stringify(draft));
    } catch (err) {
      // storage full or refused: the ranking simply does not survive a reload
    }
  }

  function loadDraft() {
    if (editing) return false;
    try {
      const draft = JSON.parse(localStorage.getItem(draftKey()) || "null");
      if (!draft) return false;
      const k = task.completions.length;
      for (const [id, r] of Object.entries(draft.ranks || {})) {
        if (rankOf.has(id) && Number.isInteger(r) && r >= 0 && r <= k) rankOf.set(id, r);
      }
      $("unrankable").checked = draft.unrankable === true;
      $("unsafe").checked = draft.unsafe === true;
      $("rationale").value = typeof draft.rationale === "string" ? draft.rationale : "";
      return true;
    } catch (err) {
      return false;
    }
  }

  function dropDraft(key) {
    try {
      localStorage.removeItem(key);
    } catch (err) {
      // nothing to do
    }
  }

  // Drafts of other tasks are left from a skip in another tab or an expired task:
  // a week is long enough to come back to one.
  function dropOldDrafts() {
    try {
      const week = 7 * 24 * 3600 * 1000;
      for (let i = localStorage.length - 1; i >= 0; i--) {
        const key = localStorage.key(i);
        if (!key || !key.startsWith("alignloop.draft.")) continue;
        const draft = JSON.parse(localStorage.getItem(key) || "null");
        if (!draft || !(Date.now() - draft.saved < week)) localStorage.removeItem(key);
      }
    } catch (err) {
      // nothing to do
    }
  }

  function startCriterion() {
    rankOf = new Map(task.completions.map((c) => [c.id, 0]));
    $("criterion").textContent = todo[step];
    $("criterion-step").textContent =
      task.criteria.length > 1
        ? t("js.criterion_step", {
            i: task.criteria.indexOf(todo[step]) + 1,
            n: task.criteria.length,
          })
        : "";
    $("unrankable").checked = false;
    $("unsafe").checked = false;
    $("rationale").value = "";
    if (editing) fillFromStored(editing.rankings[step]);
    const restored = loadDraft();
    const ranked = task.criteria.filter((c) => !todo.slice(step).includes(c));
    $("skip-note").textContent = ranked.length && !editing
      ? t(personal ? "js.skip_after_first_personal" : "js.skip_after_first", {
        ranked: ranked.join(", "),
      })
      : "";
    place();
    if (restored) say(t("js.draft_restored"), "info");
  }

  function fillFromStored(stored) {
    stored.ranking.forEach((group, i) => group.forEach((id) => rankOf.set(id, i + 1)));
    $("unrankable").checked = stored.unrankable;
    $("unsafe").checked = stored.flag_unsafe;
    $("rationale").value = stored.rationale;
  }

  // --- changing the last ranked task ------------------------------------------------------

  async function startEdit() {
    if (busy) return;
    const response = await api("GET", "/api/v1/rankings/last?project=" + encodeURIComponent(project));
    if (response.status === 204) {
      say(t("js.nothing_to_change"), "info");
      return;
    }
    if (!response.ok) {
      say(problems(await response.json().catch(() => null)), "error");
      return;
    }
    const last = await response.json();
    editing = last;
    task = last;
    todo = last.rankings.map((r) => r.criterion);
    step = 0;
    $("done").hidden = true;
    showPrompt();
    buildBoard();
    startCriterion();
    $("edit-text").textContent = t("js.editing", { criteria: todo.join(", ") });
    $("edit-banner").hidden = false;
    $("skip").hidden = true;
    $("task").hidden = false;
    say("");
    cards.values().next().value.focus();
  }

  async function stopEdit(message) {
    editing = null;
    $("edit-banner").hidden = true;
    $("skip").hidden = false;
    say("");
    await loadNext();
    if (message) say(message, "ok");
  }

  // Every letter in the slot of its rank (in letter order), every card's badge and
  // pressed rank button.
  function place() {
    task.completions.forEach((c) => {
      const rank = rankOf.get(c.id);
      const zone = rank === 0 ? $("pool") : $("ranks").querySelector('[data-rank="' + rank + '"]');
      zone.querySelector(".chips").append(chips.get(c.id));
      const card = cards.get(c.id);
      const badge = rank === 0 ? t("js.not_ranked") : t("js.rank_n", { n: rank });
      card.querySelector(".badge").textContent = badge;
      // what a screen reader says on reaching the card: "Response A, rank 2"
      card.setAttribute("aria-label", t("js.response", { letter: letterOf.get(c.id) }) + ", " + badge);
      card.classList.toggle("ranked", rank > 0);
      card.querySelectorAll(".rank-button").forEach((b) => {
        b.setAttribute("aria-pressed", String(Number(b.dataset.rank) === rank));
      });
    });
    updateSubmit();
  }

  function setRank(id, rank) {
    rankOf.set(id, rank);
    place();
    saveDraft();
  }

  // --- dragging: pointer events, one path for mouse, pen and touch ---------------------

  function draggable(source, id) {
    source.addEventListener("pointerdown", (e) => {
      if (e.button !== 0 || busy) return;
      if (e.target.closest("button, a, input, textarea")) return;
      // A finger drags by the grip or the letter; elsewhere on a card it scrolls.
      if (e.pointerType !== "mouse" && !e.target.closest(".grip, .chip")) return;
      const start = { x: e.clientX, y: e.clientY };
      let ghost = null;
      let over = null;
      const zoneAt = (x, y) => {
        const hit = document.elementFromPoint(x, y);
        return hit && hit.closest("#labeling .zone");
      };
      const move = (ev) => {
        if (!ghost) {
          if (Math.hypot(ev.clientX - start.x, ev.clientY - start.y) < 4) return;
          ghost = el("div", "drag-ghost", t("js.response", { letter: letterOf.get(id) }));
          document.body.append(ghost);
          document.body.classList.add("dragging");
          source.classList.add("dragging");
          const selection = window.getSelection();
          if (selection) selection.removeAllRanges();
        }
        ev.preventDefault();
        ghost.style.left = ev.clientX + 12 + "px";
        ghost.style.top = ev.clientY + 12 + "px";
        const zone = zoneAt(ev.clientX, ev.clientY);
        if (zone !== over) {
          if (over) over.classList.remove("over");
          if (zone) zone.classList.add("over");
          over = zone;
        }
      };
      const end = (ev) => {
        source.removeEventListener("pointermove", move);
        source.removeEventListener("pointerup", end);
        source.removeEventListener("pointercancel", end);
        if (!ghost) return;
        ghost.remove();
        document.body.classList.remove("dragging");
        source.classList.remove("dragging");
        if (over) over.classList.remove("over");
        const zone = ev.type === "pointerup" ? zoneAt(ev.clientX, ev.clientY) : null;
        if (zone && cards.has(id)) {
          setRank(id, Number(zone.dataset.rank));
          cards.get(id).focus({ preventScroll: true });
        }
      };
      source.setPointerCapture(e.pointerId);
      source.addEventListener("pointermove", move);
      source.addEventListener("pointerup", end);
      source.addEventListener("pointercancel", end);
    });
  }

  // --- the keyboard ---------------------------------------------------------------------

  function onCardKey(e) {
    if (e.altKey || e.ctrlKey || e.metaKey) return;
    const list = [...cards.values()];
    const at = list.indexOf(e.currentTarget);
    if (/^[0-9]$/.test(e.key)) {
      e.preventDefault();
      const rank = Number(e.key);
      if (rank <= task.completions.length) setRank(e.currentTarget.dataset.id, rank);
      // The focus stays on this card: Tab goes on to the next response.
    } else if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
      e.preventDefault();
      const next = list[(at + (e.key === "ArrowRight" ? 1 : list.length - 1)) % list.length];
      next.focus();
    } else if (e.key === "Enter" && !$("submit").disabled) {
      e.preventDefault();
      submit();
    }
  }

  function inTextField(node) {
    return !!(node && node.closest &&
      node.closest("textarea, select, [contenteditable], input:not([type=checkbox]):not([type=radio])"));
  }

  function toggle(id, show) {
    const box = $(id);
    const open = show === undefined ? box.hidden : show;
    box.hidden = !open;
    if (open) {
      box.querySelector(".close").focus();
    } else if (lastCard && document.body.contains(lastCard)) {
      lastCard.focus();
    }
  }

  function onKey(e) {
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") {
      e.preventDefault(); // also from the rationale box
      if (!$("submit").disabled) submit();
      return;
    }
    if (e.key === "Escape") {
      if (!$("help").hidden) toggle("help", false);
      else if (!$("guidelines-panel").hidden) toggle("guidelines-panel", false);
      else if (inTextField(e.target) && lastCard) lastCard.focus();
      return;
    }
    if (e.altKey || e.ctrlKey || e.metaKey || inTextField(e.target)) return;
    if (e.key === "?") {
      e.preventDefault();
      toggle("help");
    } else if (!$("help").hidden) {
      return; // the help overlay is open: no other shortcut
    } else if (e.key === "g") {
      e.preventDefault();
      toggle("guidelines-panel");
    } else if (!task || $("task").hidden) {
      return;
    } else if (e.key === "s" && !editing) {
      e.preventDefault();
      skip();
    } else if (e.key === "e" && !$("edit-last").hidden && !editing) {
      e.preventDefault();
      startEdit();
    } else if (e.key === "u") {
      e.preventDefault();
      $("unrankable").checked = !$("unrankable").checked;
      updateSubmit();
      saveDraft();
    } else if (/^[0-9]$/.test(e.key) && !(e.target.closest && e.target.closest(".completion"))) {
      e.preventDefault();
      say(t("js.focus_first"), "info");
    }
  }

  // --- submitting and skipping ------------------------------------------------------------

  function allRanked() {
    return [...rankOf.values()].every((r) => r > 0);
  }

  function updateSubmit() {
    $("submit").disabled = busy || !task || !($("unrankable").checked || allRanked());
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
    if (busy || !task) return;
    busy = true;
    updateSubmit();
    const unrankable = $("unrankable").checked;
    const criterion = todo[step];
    const key = draftKey();
    const body = {
      criterion,
      ranking: unrankable ? [] : groups(),
      unrankable,
      rationale: $("rationale").value,
      flag_unsafe: $("unsafe").checked,
    };
    try {
      const path = "/api/v1/assignments/" + task.assignment_id + "/ranking";
      const response = editing
        ? await api("PUT", path, body)
        : await postWithRetry(path, body);
      const payload = await response.json().catch(() => null);
      if (editing && response.ok) {
        step += 1;
        if (step < todo.length) {
          startCriterion();
          say(t("js.changed_next", { done: criterion, next: todo[step] }), "ok");
          cards.values().next().value.focus({ preventScroll: true });
        } else {
          busy = false;
          await stopEdit(t("js.changed"));
        }
      } else if (response.status === 200 || response.status === 201) {
        $("edit-last").hidden = false;
        dropDraft(key);
        step += 1;
        if (step < todo.length) {
          startCriterion();
          say(t("js.saved_next_criterion", {
            done: criterion,
            next: todo[step],
            i: task.criteria.indexOf(todo[step]) + 1,
            n: task.criteria.length,
          }), "ok");
          const heading = $("criterion-heading");
          heading.classList.remove("flash");
          void heading.offsetWidth; // restart the animation
          heading.classList.add("flash");
          // The message and the heading into view (a phone has scrolled down to Submit).
          $("message").scrollIntoView({ block: "start" });
          heading.scrollIntoView({ block: "nearest" });
          cards.values().next().value.focus({ preventScroll: true });
        } else {
          say("");
          await loadNext();
          say(t("js.saved"), "ok");
        }
      } else if (response.status === 401) {
        // The session ended (signed out elsewhere, deactivated, 12 hours): the
        // ranking stays in the draft and comes back after signing in.
        saveDraft();
        window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
      } else if (response.status === 409) {
        dropDraft(key);
        say(t("js.loading_next", { problem: problems(payload) }), "warn");
        await loadNext();
      } else {
        say(problems(payload), "error");
      }
    } catch (err) {
      say(t("js.offline_submit"), "error");
    } finally {
      busy = false;
      updateSubmit();
    }
  }

  async function skip() {
    if (busy || !task) return;
    busy = true;
    updateSubmit();
    const keys = todo.map((c) => draftPrefix + task.assignment_id + "." + c);
    try {
      const response = await postWithRetry("/api/v1/assignments/" + task.assignment_id + "/skip");
      if (response.status === 401) {
        window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
      } else if (!response.ok) {
        say(problems(await response.json().catch(() => null)), "error");
      } else {
        keys.forEach(dropDraft);
        say("");
        await loadNext();
        say(t(personal ? "js.skipped_personal" : "js.skipped"), "info");
      }
    } catch (err) {
      say(t("js.offline_load"), "error");
    } finally {
      busy = false;
      updateSubmit();
    }
  }

  document.addEventListener("keydown", onKey);
  document.addEventListener("dragstart", (e) => {
    if (e.target.closest && e.target.closest("#task")) e.preventDefault(); // ours, not the browser's
  });
  $("submit").addEventListener("click", submit);
  $("skip").addEventListener("click", skip);
  $("unrankable").addEventListener("change", () => {
    updateSubmit();
    saveDraft();
  });
  $("unsafe").addEventListener("change", saveDraft);
  $("rationale").addEventListener("input", saveDraft);
  $("show-guidelines").addEventListener("click", () => toggle("guidelines-panel"));
  $("show-help").addEventListener("click", () => toggle("help"));
  $("edit-last").addEventListener("click", startEdit);
  $("edit-cancel").addEventListener("click", () => stopEdit(""));
  document.querySelectorAll("#labeling .close").forEach((b) =>
    b.addEventListener("click", () => toggle(b.closest("[id]").id, false)));
  dropOldDrafts();
  loadNext().catch(() => say(t("js.offline_load"), "error"));
  // "Change my last ranking" shows once there is one to change.
  api("GET", "/api/v1/rankings/last?project=" + encodeURIComponent(project))
    .then((r) => ($("edit-last").hidden = r.status !== 200))
    .catch(() => {});
})();
