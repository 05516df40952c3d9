/* The event explorer of the dashboard: "did order 1042 reach TikTok, with its click?"
 *
 * Search receipts by event id or order id (GET v1/admin/events?q=, the receipts' buckets) or by time
 * (the receipt log, paged with its cursor); show each event's status, its source and whether it
 * carried a click; open one for the payload exactly as TikTok got it (hashed) and TikTok's answer;
 * replay it; and, in sandbox or test mode, tail incoming events live.
 *
 * dashboard.js owns the token: it announces 'ttgw:refreshed' with its API function and the mode
 * after each load, and 'ttgw:signed-out'. Data reaches the page only through textContent.
 */
(function () {
  'use strict';

  const LIVE_MS = 2000;
  const PAGE = 25;
  const SOURCES = {
    browser: 'browser', server: 'server', segment: 'Segment / RudderStack',
    webhook: 'webhook', 'webhook-test': 'webhook (test order)'
  };
  const STATUS_HINTS = {
    queued: 'waiting to be sent', retrying: 'TikTok or the network failed; will retry',
    delivered: 'TikTok accepted it', dead: 'refused or out of retries; can be replayed',
    suppressed: 'not sent: consent refused'
  };
  const DEDUP_WINDOW_MS = 48 * 3600 * 1000;

  const state = {
    dashboard: null, // the last 'ttgw:refreshed' detail: api, sandbox, integrations, signOut
    rows: [], // the events listed
    query: null, // the filters of the list shown (null: live)
    cursor: null,
    selected: null, // key of the event opened
    liveTimer: null,
    generation: 0,
    flash: null // the outcome of the last replay, by event key, shown while it is open
  };

  function byId(id) {
    return document.getElementById(id);
  }

  function el(tag, options, children) {
    const node = document.createElement(tag);
    Object.keys(options || {}).forEach(function (name) {
      const value = options[name];
      if (value === undefined || value === null) return;
      if (name === 'text') node.textContent = String(value);
      else if (name === 'className') node.className = value;
      else node.setAttribute(name, String(value));
    });
    (children || []).forEach(function (child) {
      if (child) node.appendChild(child);
    });
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function timeNode(ms) {
    if (!ms) return el('span', { className: 'muted', text: '—' });
    const date = new Date(ms);
    return el('time', { datetime: date.toISOString(), text: date.toLocaleString('en-GB') });
  }

  function keyOf(e) {
    return e.pixel + '\u001f' + e.event + '\u001f' + e.event_id;
  }

  function answerText(e) {
    const parts = [];
    if (e.code !== null && e.code !== undefined) parts.push('code ' + e.code);
    if (e.http_status) parts.push('HTTP ' + e.http_status);
    if (e.message) parts.push(e.message);
    return parts.length ? parts.join(' · ') : '—';
  }

  function clickBadge(click) {
    if (click === null || click === undefined) {
      return el('span', { className: 'click click-unknown', text: 'not sent yet' });
    }
    return click ? el('span', { className: 'click click-yes', text: 'with click' })
      : el('span', { className: 'click click-no', text: 'no click' });
  }

  function statusNode(e) {
    const name = e.state || 'unknown';
    const node = el('span', { className: 'state state-' + name, text: name,
      title: STATUS_HINTS[name] || '' });
    if (!e.duplicates) return node;
    return el('span', {}, [node, el('span', {
      className: 'badge dup', text: '+' + e.duplicates + ' duplicate' + (e.duplicates > 1 ? 's' : ''),
      title: 'repeats answered "duplicate" at ingest and not sent again'
    })]);
  }

  async function call(path, body) {
    const generation = state.generation;
    try {
      const answer = await state.dashboard.api(path, body);
      return generation === state.generation ? answer : null;
    } catch (error) {
      if (error.name === 'Unauthorized') state.dashboard.signOut();
      throw error;
    }
  }

  // ---------------------------------------------------------------- the list

  function queryFromForm() {
    const params = new URLSearchParams();
    const text = byId('explorer-q').value.trim();
    if (text) params.set('q', text);
    const status = byId('explorer-state').value;
    if (status) params.set('state', status);
    [['explorer-since', 'since'], ['explorer-until', 'until']].forEach(function (pair) {
      const value = byId(pair[0]).value;
      if (value) params.set(pair[1], String(new Date(value).getTime() / 1000));
    });
    params.set('limit', String(PAGE));
    return params;
  }

  function describe(params) {
    const parts = [];
    if (params.get('q')) parts.push('event ids containing “' + params.get('q') + '”');
    if (params.get('state')) parts.push(params.get('state'));
    if (params.get('since') || params.get('until')) parts.push('in the chosen time range');
    return parts.length ? parts.join(', ') : 'recent events';
  }

  async function load(params, more) {
    const summary = byId('explorer-summary');
    if (more && state.cursor) params.set('cursor', state.cursor);
    summary.className = 'muted';
    summary.textContent = 'Loading…';
    let answer;
    try {
      answer = await call('v1/admin/events?' + params.toString());
    } catch (error) {
      summary.className = 'error';
      summary.textContent = 'Could not load the events: ' + error.message;
      return;
    }
    if (!answer) return;
    state.query = params;
    state.rows = more ? state.rows.concat(answer.events) : answer.events;
    state.cursor = answer.next_cursor;
    renderRows();
    const n = state.rows.length;
    summary.className = n ? 'muted' : 'ok-text';
    summary.textContent = n ? n + ' event' + (n === 1 ? '' : 's') + ': ' + describe(params) +
      ', newest first.' : 'No event found: ' + describe(params) + '.';
    if (n === 1 && params.get('q')) openEvent(state.rows[0]);
  }

  function renderRows() {
    const tbody = byId('explorer-table').tBodies[0];
    clear(tbody);
    state.rows.forEach(function (e) {
      const open = el('button', {
        type: 'button', className: 'link mono', text: e.event_id,
        'aria-label': 'Open ' + e.event + ' ' + e.event_id
      });
      open.addEventListener('click', function () { openEvent(e); });
      tbody.appendChild(el('tr', {
        'data-event-id': e.event_id, className: keyOf(e) === state.selected ? 'selected' : ''
      }, [
        el('td', {}, [timeNode(e.received_ms)]),
        el('td', { text: e.event }),
        el('td', {}, [open]),
        el('td', { text: SOURCES[e.source] || e.source || '—' }),
        el('td', {}, [clickBadge(e.click)]),
        el('td', {}, [statusNode(e)]),
        el('td', { className: 'answer', text: answerText(e) }),
        el('td', { className: 'num', text: e.attempts === null ? '—' : e.attempts })
      ]));
    });
    byId('explorer-table').hidden = state.rows.length === 0;
    byId('explorer-more').hidden = !(state.cursor && state.query);
  }

  // ---------------------------------------------------------------- one event

  function fact(name, value) {
    const dd = value instanceof Node ? el('dd', {}, [value]) : el('dd', { text: value });
    return [el('dt', { text: name }), dd];
  }

  async function openEvent(e) {
    state.selected = keyOf(e);
    renderRows();
    const detail = byId('explorer-detail');
    let answer;
    try {
      answer = await call('v1/admin/events/' + encodeURIComponent(e.event_id));
    } catch (error) {
      clear(detail);
      detail.appendChild(el('p', { className: 'error', text: 'Could not open it: ' + error.message }));
      detail.hidden = false;
      return;
    }
    if (!answer) return;
    const receipt = answer.receipts.filter(function (r) { return keyOf(r) === keyOf(e); })[0] ||
      answer.receipts[answer.receipts.length - 1];
    renderDetail(receipt);
  }

  function renderDetail(r) {
    const detail = byId('explorer-detail');
    clear(detail);
    const user = r.payload && r.payload.user ? r.payload.user : null;
    const click = r.payload ? Boolean(user && user.ttclid) : null;
    const facts = [
      fact('Status', statusNode(r)),
      fact('Pixel', r.pixel),
      fact('Source', SOURCES[r.source] || r.source || '—'),
      fact('Click (ttclid)', clickBadge(click)),
      fact('Received', timeNode(r.received_ms)),
      fact('First try', timeNode(r.first_try_ms)),
      fact('Last try', timeNode(r.last_try_ms)),
      fact('Attempts', r.attempts === null ? '—' : String(r.attempts)),
      fact('HTTP status', r.http_status === null ? '—' : String(r.http_status)),
      fact("TikTok's code", r.code === null ? '—' : String(r.code)),
      fact("TikTok's message", r.message || '—'),
      fact("TikTok's request id", r.request_id || '—')
    ];
    if (r.reason) facts.push(fact('Reason', r.reason));
    if (r.duplicates) facts.push(fact('Duplicates', r.duplicates + ' answered “duplicate” at ingest'));
    if (r.replayed_ms) facts.push(fact('Replayed', timeNode(r.replayed_ms)));
    const replay = el('button', { type: 'button', id: 'explorer-replay', text: 'Replay this event' });
    const result = el('p', { id: 'explorer-replay-result', className: 'muted', role: 'status',
      'aria-live': 'polite' });
    replay.addEventListener('click', function () { replayEvent(r, replay, result); });
    // a replay's outcome outlives the detail being drawn again (a list reload re-opens it)
    if (state.flash && state.flash.key === keyOf(r)) {
      result.className = state.flash.className;
      result.textContent = state.flash.text;
    }
    const payload = r.payload
      ? el('pre', { id: 'explorer-payload', className: 'payload', tabindex: '0',
        text: JSON.stringify(r.payload, null, 2) })
      : el('p', { className: 'muted', text: 'Nothing sent yet: the payload is recorded when ' +
        'the event is sent to TikTok.' });
    detail.appendChild(el('h3', { id: 'explorer-detail-title', text: r.event + ' · ' + r.event_id }));
    detail.appendChild(el('div', { className: 'explorer-detail' }, [
      el('dl', { className: 'answer-list', id: 'explorer-facts' }, [].concat.apply([], facts)),
      el('div', {}, [
        el('h4', { text: 'Payload as TikTok got it (identifiers hashed)' }),
        payload
      ])
    ]));
    detail.appendChild(el('div', { className: 'row' }, [replay, result]));
    detail.hidden = false;
  }

  function whyNotReplayed(r) {
    if (r.state === 'delivered') {
      const at = r.last_try_ms || r.received_ms;
      const recent = at && Date.now() - at < DEDUP_WINDOW_MS;
      return 'It was already delivered' + (at ? ' on ' + new Date(at).toLocaleString('en-GB') : '') +
        (recent ? ', within TikTok\'s 48 h deduplication window: TikTok would ignore a resend.'
          : '. Only dead letters are replayed.');
    }
    if (r.state === 'queued' || r.state === 'retrying') return 'It is still in the queue.';
    if (r.state === 'suppressed') return 'Consent refused it: it is never sent.';
    return 'It is not a dead letter.';
  }

  async function replayEvent(r, button, result) {
    button.disabled = true;
    result.className = 'muted';
    result.textContent = 'Replaying…';
    let answer;
    try {
      answer = await call('v1/admin/replay', { event_ids: [r.event_id] });
    } catch (error) {
      result.className = 'error';
      result.textContent = 'Replay failed: ' + error.message;
      button.disabled = false;
      return;
    }
    if (!answer) return;
    const queued = answer.queued || 0;
    if (queued) {
      state.flash = { key: keyOf(r), className: 'ok-text',
        text: 'Replay: queued for delivery (the API answered queued: ' + queued + ').' };
      await openEvent(r);
      if (state.query) {
        const params = new URLSearchParams(state.query);
        params.delete('cursor');
        load(params, false);
      }
      return;
    }
    result.className = 'muted';
    result.textContent = 'Not replayed (the API answered queued: 0). ' + whyNotReplayed(r);
    button.disabled = false;
  }

  // ---------------------------------------------------------------- live tail

  function liveOffered() {
    const d = state.dashboard;
    if (!d) return false;
    return d.sandbox || d.integrations.some(function (i) {
      return i.enabled !== false && Boolean(i.test_event_code);
    });
  }

  function renderLiveOffer() {
    const box = byId('explorer-live');
    const note = byId('explorer-live-note');
    const offered = liveOffered();
    box.disabled = !offered;
    if (!offered && box.checked) setLive(false);
    if (offered) {
      note.textContent = state.dashboard.sandbox
        ? 'Sandbox mode: incoming events appear as they arrive, every 2 s.'
        : 'Test mode (an integration has a test event code): incoming events appear every 2 s.';
    } else {
      note.textContent = 'Live is offered in sandbox mode or when an integration has a test ' +
        'event code (test mode); in production, search by event id, order id or time.';
    }
  }

  function setLive(on) {
    byId('explorer-live').checked = on;
    clearTimeout(state.liveTimer);
    state.liveTimer = null;
    byId('explorer-section').classList.toggle('live', on);
    if (on) {
      state.query = null;
      state.cursor = null;
      tick();
    }
  }

  async function tick() {
    let answer = null;
    try {
      answer = await call('v1/admin/events?limit=' + PAGE);
    } catch (error) {
      byId('explorer-summary').textContent = 'Live: ' + error.message;
    }
    if (!byId('explorer-live').checked) return;
    if (answer) {
      state.rows = answer.events;
      state.cursor = null;
      renderRows();
      const summary = byId('explorer-summary');
      summary.className = 'muted';
      const n = answer.events.length;
      summary.textContent = 'Live: the latest ' + n + ' event' + (n === 1 ? '' : 's') + ', updated ' +
        new Date().toLocaleTimeString('en-GB') + '.';
    }
    state.liveTimer = setTimeout(tick, LIVE_MS);
  }

  // ---------------------------------------------------------------- wiring

  function reset() {
    state.generation += 1;
    setLive(false);
    state.dashboard = null;
    state.rows = [];
    state.query = null;
    state.cursor = null;
    state.selected = null;
    clear(byId('explorer-table').tBodies[0]);
    clear(byId('explorer-detail'));
    byId('explorer-detail').hidden = true;
    byId('explorer-summary').textContent = '';
    byId('explorer-q').value = '';
  }

  function start() {
    document.addEventListener('ttgw:refreshed', function (event) {
      const first = state.dashboard === null;
      state.dashboard = event.detail;
      renderLiveOffer();
      if (first) load(queryFromForm(), false);
    });
    document.addEventListener('ttgw:signed-out', reset);
    byId('explorer-form').addEventListener('submit', function (event) {
      event.preventDefault();
      if (!state.dashboard) return;
      setLive(false);
      load(queryFromForm(), false);
    });
    byId('explorer-more').addEventListener('click', function () {
      if (state.query) load(new URLSearchParams(state.query), true);
    });
    byId('explorer-live').addEventListener('change', function (event) {
      setLive(event.target.checked && liveOffered());
    });
  }

  start();
})();
