// marginsim dashboard: plays a run's event log in the browser. Plain script, no library.
"use strict";

const $ = (id) => document.getElementById(id);
let run = null;          // {meta, from, events}: events[0] is the run's event number `from` (a live
                         // session lets its oldest go); meta.live: a served run, asked for more each second
let cursor = 0;          // events[0..cursor) are applied
let state = null;
let playing = false;
let virtualMs = 0;       // the play head, in virtual ms
let timer = null;
const TICK_MS = 50;
const POLL_MS = 1000;

// The x axis: the run's length, or for a live run the time it has reached.
function xMax() {
  const last = run.events.length ? run.events[run.events.length - 1].t : 0;
  return run.meta.until_ms || Math.max(last, 1000);
}

// positions: account -> market -> the position after its newest fill, newer than its last
// health sample (which replaces them), so the table and the feed show one instant.
function fresh() {
  return { t: 0, prices: {}, trades: {}, health: {}, mmr: {}, books: {}, feed: [], heldFund: 0, feeFund: 0,
           backstops: 0, used: {}, adls: 0, adlParties: new Set(), bankrupt: {}, liquidating: {}, positions: {} };
}

function apply(s, e) {
  s.t = e.t;
  const kind = e.event;
  if (kind === "price") {
    (s.prices[e.symbol] = s.prices[e.symbol] || []).push([e.t, Number(e.price)]);
  } else if (kind === "trade") {
    const market = e.actor.split(":")[1];
    (s.trades[market] = s.trades[market] || []).push([e.t, Number(e.price), e.taker_origin !== "USER"]);
  } else if (kind === "health") {
    const account = e.actor.split(":")[1];
    s.health[account] = e;
    delete s.positions[account];
    const m = e.mmr === "inf" ? Infinity : Number(e.mmr);
    (s.mmr[account] = s.mmr[account] || []).push([e.t, m]);
  } else if (kind === "book_top") {
    s.books[e.actor.split(":")[1]] = e;
  } else if (kind === "fund_flow" || kind === "lenders_compensated") {
    s.heldFund = Number(e.fund);
  } else if (kind === "fill") {
    if (e.position !== undefined && e.position !== null) {
      const account = e.actor.split(":")[1];
      (s.positions[account] = s.positions[account] || {})[e.market] = e.position;
    }
    if (e.liquidation_fee && e.market.endsWith("_PERP")) s.feeFund += Number(e.liquidation_fee);
  } else if (kind === "liquidation_step") {
    s.feed.push({ account: e.account, text: e.text, stage: e.stage });
    if (e.stage === "backstop") {
      s.backstops += 1;
      const m = /taken by (\S+) at mark/.exec(e.reason);
      if (m) {
        const key = `${m[1]} ${e.market}`;
        s.used[key] = (s.used[key] || 0) + Number(e.quantity) * Number(e.price);
      }
    }
    if (e.stage === "adl") {
      s.adls += 1;
      const m = /closed against (\S+)/.exec(e.reason);
      if (m) s.adlParties.add(m[1]);
    }
    if (e.stage === "start") s.liquidating[e.account] = true;
    if (["healthy", "closed", "bankruptcy"].includes(e.stage)) delete s.liquidating[e.account];
    if (e.stage === "bankruptcy") s.bankrupt[e.account] = true;
  }
}

function rebuild(to) {
  state = fresh();
  for (let i = 0; i < to; i++) apply(state, run.events[i]);
  cursor = to;
}

// Apply events up to virtual time `ms` (or one event); stop at a liquidation step when asked.
function forward(limitMs, oneEvent) {
  const stopOnLiq = $("pause-on-liquidation").checked;
  while (cursor < run.events.length) {
    const e = run.events[cursor];
    if (!oneEvent && e.t > limitMs) break;
    apply(state, e);
    cursor += 1;
    if (oneEvent) break;
    if (stopOnLiq && e.event === "liquidation_step") { pause(); virtualMs = e.t; return; }
  }
}

function play() {
  if (playing) return;
  playing = true;
  $("state").textContent = "playing";
  timer = setInterval(() => {
    virtualMs += TICK_MS * Number($("speed").value);
    forward(virtualMs, false);
    if (cursor >= run.events.length && !run.meta.live) pause();
    draw();
  }, TICK_MS);
}

function pause() {
  playing = false;
  if (timer) clearInterval(timer);
  timer = null;
  $("state").textContent = cursor >= (run ? run.events.length : 0) && !(run && run.meta.live) ? "ended" : "paused";
}

function series(points, x0, x1, y0, y1, ctx, w, h, style) {
  ctx.strokeStyle = style; ctx.beginPath();
  let started = false;
  for (const [t, v] of points) {
    const x = ((t - x0) / Math.max(x1 - x0, 1)) * w;
    const clipped = Math.min(Math.max(v, y0), y1);
    const y = h - ((clipped - y0) / Math.max(y1 - y0, 1e-9)) * h;
    if (!started) { ctx.moveTo(x, y); started = true; } else { ctx.lineTo(x, y); }
  }
  ctx.stroke();
}

function axes(ctx, w, h, y0, y1, label) {
  ctx.fillStyle = "#555"; ctx.font = "11px sans-serif";
  ctx.fillText(label(y1), 4, 12); ctx.fillText(label(y0), 4, h - 4);
}

function drawPrices() {
  const canvas = $("prices"), ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const market = run.meta.market;
  if (!market) return;
  const mark = state.prices[market] || [], index = state.prices[run.meta.base] || [];
  const trades = state.trades[market] || [];
  const values = [...mark, ...index, ...trades].map((p) => p[1]);
  if (!values.length) return;
  let y0 = Math.min(...values), y1 = Math.max(...values);
  const pad = (y1 - y0) * 0.05 || y1 * 0.001; y0 -= pad; y1 += pad;
  const x1 = xMax();
  series(index, 0, x1, y0, y1, ctx, w, h, "#888");
  series(mark, 0, x1, y0, y1, ctx, w, h, "#1f77b4");
  for (const [t, p, liq] of trades) {
    const x = (t / x1) * w, y = h - ((p - y0) / (y1 - y0)) * h;
    ctx.fillStyle = liq ? "#d62728" : "#2ca02c";
    ctx.fillRect(x - 2, y - 2, 4, 4);
  }
  axes(ctx, w, h, y0, y1, (v) => v.toFixed(1));
}

function drawMmr() {
  const canvas = $("mmr"), ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const top = run.meta.auto_close * 1.5, x1 = xMax();
  const line = (level, dash, color) => {
    const y = h - (level / top) * h; ctx.setLineDash(dash); ctx.strokeStyle = color;
    ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(w, y); ctx.stroke(); ctx.setLineDash([]);
  };
  line(1, [6, 4], "#d62728");
  line(run.meta.auto_close, [2, 3], "#000");
  const palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  Object.keys(state.mmr).sort().forEach((account, i) => {
    const points = state.mmr[account].map(([t, m]) => [t, m === Infinity ? top : m]);
    if (!points.some(([, m]) => m > 0.5)) return;  // only accounts that came near a threshold
    const color = palette[i % palette.length];
    series(points, 0, x1, 0, top, ctx, w, h, color);
    const [t, m] = points[points.length - 1];
    ctx.fillStyle = color; ctx.font = "11px sans-serif";
    ctx.fillText(account, (t / x1) * w + 3, h - (Math.min(m, top) / top) * h - 2);
  });
  axes(ctx, w, h, 0, top, (v) => `${(v * 100).toFixed(0)}%`);
}

function cell(text, cls) {
  const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; return td;
}

function drawAccounts() {
  const body = $("accounts").querySelector("tbody");
  body.replaceChildren();
  for (const account of Object.keys(state.health).sort()) {
    const h = state.health[account];
    const tr = document.createElement("tr");
    tr.dataset.account = account;
    const debt = h.unsettled_equity && h.unsettled_equity.startsWith("-") ? h.unsettled_equity.slice(1) : null;
    let label = "";
    if (h.status_text !== undefined) {  // the closing sample: the server judged the end with run's rule
      label = h.status_text;
      if (label) tr.className = state.bankrupt[account] ? "bankrupt" : "ended";
    } else if (state.bankrupt[account]) {  // the debt once a sample after the bankruptcy has it
      label = debt ? `bankrupt: owes the fund ${h.debt_text || debt}` : "bankrupt"; tr.className = "bankrupt";
    } else if (state.liquidating[account]) { label = "liquidating"; tr.className = "liquidating"; }
    const held = { ...(h.positions || {}), ...(state.positions[account] || {}) };
    const positions = Object.entries(held).filter(([, q]) => Number(q) !== 0).map(([m, q]) => `${q} ${m}`)
      .join(", ") || "-";
    tr.append(cell(account), cell(h.equity_text), cell(h.imr_text), cell(h.mmr_text), cell(positions, "text"),
              cell(label, "text"));
    body.append(tr);
  }
}

function drawBooks() {
  const body = $("books").querySelector("tbody");
  body.replaceChildren();
  for (const market of Object.keys(state.books).sort()) {
    const b = state.books[market];
    const tr = document.createElement("tr");
    tr.append(cell(market), cell(b.bid ? `${b.bid_quantity} @ ${b.bid}` : "-"), cell(b.ask ? `${b.ask_quantity} @ ${b.ask}` : "-"));
    body.append(tr);
  }
}

function drawFeed() {
  const feed = $("feed");
  if (feed.children.length > state.feed.length) feed.replaceChildren();
  for (const li of feed.querySelectorAll("li.new")) li.classList.remove("new");
  for (let i = feed.children.length; i < state.feed.length; i++) {
    const li = document.createElement("li");
    li.className = `new stage-${state.feed[i].stage}`;
    li.dataset.account = state.feed[i].account;
    li.dataset.stage = state.feed[i].stage;
    li.textContent = `${state.feed[i].account}: ${state.feed[i].text}`;
    feed.append(li);
    feed.scrollTop = feed.scrollHeight;
  }
}

function draw() {
  $("time").textContent = (state.t / 1000).toFixed(3);
  $("cursor").textContent = run.from + cursor;
  $("total").textContent = run.from + run.events.length;
  $("scrub").max = run.events.length;
  $("scrub").value = cursor;
  $("fund").textContent = `${(state.heldFund + state.feeFund).toFixed(2)} ${run.meta.settle}`;
  $("backstops").textContent = state.backstops;
  $("adls").textContent = state.adls;
  const room = [];
  for (const [provider, capacity] of Object.entries(run.meta.backstops || {})) {
    for (const [symbol, most] of Object.entries(capacity)) {
      const left = Math.max(most - (state.used[`${provider} ${symbol}`] || 0), 0);
      room.push(`${provider} ${symbol}: ${left.toFixed(2)} of ${most.toFixed(0)} ${run.meta.settle}`);
    }
  }
  $("backstop-room").textContent = room.join("; ") || "no backstop configured";
  $("adl-parties").textContent = [...state.adlParties].sort().join(", ") || "-";
  drawPrices(); drawMmr(); drawAccounts(); drawBooks(); drawFeed();
}

async function start() {
  const answer = await fetch("/dashboard/run.json");
  if (!answer.ok) { $("title").textContent = `marginsim: ${(await answer.json()).message}`; return; }
  run = await answer.json();
  $("title").textContent = `marginsim: ${run.meta.name || "a run"} (seed ${run.meta.seed})` +
    (run.meta.live ? ", live" : "") + (run.from ? ` from event ${run.from}` : "");
  rebuild(0);
  $("play").onclick = play;
  $("pause").onclick = () => { pause(); draw(); };
  $("step-event").onclick = () => { pause(); forward(0, true); virtualMs = state.t; draw(); };
  $("step-second").onclick = () => { pause(); virtualMs = state.t + 1000; forward(virtualMs, false); draw(); };
  $("back").onclick = () => {
    pause(); const target = Math.max(state.t - 1000, 0);
    let i = 0; while (i < run.events.length && run.events[i].t <= target) i++;
    rebuild(i); virtualMs = target; draw();
  };
  $("scrub").oninput = () => { pause(); rebuild(Number($("scrub").value)); virtualMs = state.t; draw(); };
  draw();
  if (run.meta.live) setInterval(more, POLL_MS);
  if (!run.meta.start_paused) play();
}

// A live run: fetch the events after those the page has; if the server let some of them go
// meanwhile, start again from what it still has.
async function more() {
  const have = run.from + run.events.length;
  const answer = await fetch(`/dashboard/run.json?after=${have}`);
  if (!answer.ok) return;
  const fresh = await answer.json();
  if (fresh.from === have) {
    for (const e of fresh.events) run.events.push(e);
  } else {
    run.from = fresh.from; run.events = fresh.events; rebuild(0);
  }
  if (!playing) draw();
}

start();
