/* The operator dashboard of tiktok-gateway.
 *
 * Plain ES2017, no library. Everything shown comes from the admin API, read with the admin token
 * the operator enters once; the token stays in this tab's sessionStorage. Data reaches the page
 * only through textContent and attribute values (never innerHTML), and the page's CSP forbids
 * inline script and style, so a hostile event name or TikTok message cannot run.
 *
 * URLs are relative, so the page works at /dashboard and under a path prefix (/_t/dashboard).
 */
(function () {
  'use strict';

  const TOKEN_KEY = 'ttgw.adminToken';
  const REFRESH_MS = 10000;
  const FAILURES_LIMIT = 50;
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const API = {
    stats: 'v1/admin/stats',
    dead: 'v1/admin/events?state=dead&limit=' + FAILURES_LIMIT,
    integrations: 'v1/admin/integrations',
    replay: 'v1/admin/replay',
    testEvent: 'v1/admin/test-event'
  };
  const DELIVERY_SERIES = [
    { name: 'accepted', label: 'accepted' },
    { name: 'delivered', label: 'delivered' },
    { name: 'retried', label: 'retried' },
    { name: 'dead', label: 'dead' }
  ];
  /* Drawing order: in a healthy minute accepted equals delivered, so delivered is a wide pale
   * band underneath and accepted a thin dashed line on top; both stay visible (dashboard.css). */
  const DELIVERY_DRAW_ORDER = ['delivered', 'retried', 'dead', 'accepted'];
  const COVERAGE_HOURS_MIN_SPAN = 2; // fewer hours with events: one bar per key, not lines
  const KEY_LABELS = {
    email: 'email',
    phone: 'phone',
    external_id: 'external id',
    ttclid: 'ttclid (click id)',
    ttp: 'ttp (browser id)',
    ip: 'IP address',
    user_agent: 'user agent'
  };
  const KEY_PLURALS = {
    email: 'email addresses',
    phone: 'phone numbers',
    external_id: 'external ids',
    ttclid: 'click ids (ttclid)',
    ttp: 'browser ids (ttp)',
    ip: 'IP addresses',
    user_agent: 'user agents'
  };
  const REASONS = { auth: 'token or permission refused' };
  const PREFERRED_EVENTS = ['Purchase', 'CompletePayment', 'PlaceAnOrder', 'InitiateCheckout'];

  const state = {
    generation: 0, // bumped on sign-out: answers of older requests are dropped
    timer: null,
    stats: null,
    integrations: [],
    sandbox: false, // no pixel configured: test events go to the built-in sandbox
    coverageEvent: null,
    failuresShown: null, // the rows on screen, as JSON
    memoryToken: null, // where the token lives when sessionStorage is unavailable
    hiddenKeys: new Set()
  };

  // ---------------------------------------------------------------- small DOM helpers

  function byId(id) {
    return document.getElementById(id);
  }

  /* An element with a class, text and attributes; children appended in order. */
  function el(tag, options, children) {
    const node = document.createElement(tag);
    applyOptions(node, options || {});
    (children || []).forEach(function (child) {
      if (child !== null && child !== undefined) node.appendChild(child);
    });
    return node;
  }

  function svg(tag, attributes, children) {
    const node = document.createElementNS(SVG_NS, tag);
    Object.keys(attributes || {}).forEach(function (name) {
      node.setAttribute(name, String(attributes[name]));
    });
    (children || []).forEach(function (child) {
      node.appendChild(child);
    });
    return node;
  }

  function applyOptions(node, options) {
    Object.keys(options).forEach(function (name) {
      const value = options[name];
      if (value === undefined || value === null) return;
      if (name === 'text') node.textContent = String(value);
      else if (name === 'className') node.className = value;
      else node.setAttribute(name, String(value));
    });
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  /* Replace a select's options only when they changed, so a refresh does not close an open
   * list or lose the keyboard focus. items: [[value, label, disabled], ...]. */
  function setOptions(select, items) {
    const signature = JSON.stringify(items);
    if (select.getAttribute('data-options') === signature) return;
    const before = select.value;
    clear(select);
    items.forEach(function (item) {
      const option = el('option', { text: item[1] });
      option.value = item[0];
      option.disabled = Boolean(item[2]);
      select.appendChild(option);
    });
    select.setAttribute('data-options', signature);
    if (items.some(function (item) { return item[0] === before && !item[2]; })) {
      select.value = before;
    }
  }

  // ---------------------------------------------------------------- formatting

  function fmtCount(n) {
    return typeof n === 'number' ? n.toLocaleString('en-US') : '—';
  }

  function fmtShare(share) {
    if (share === null || share === undefined || isNaN(share)) return '—';
    return Math.round(share * 100) + '%';
  }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined) return '—';
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
    if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
    return Math.floor(s / 86400) + ' d ' + Math.floor((s % 86400) / 3600) + ' h';
  }

  function fmtTime(ms) {
    if (!ms) return '—';
    return new Date(ms).toLocaleString([], {
      month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit'
    });
  }

  function fmtClock(ms) {
    return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }

  function fmtHour(ms) {
    return new Date(ms).toLocaleString([], { weekday: 'short', hour: '2-digit', minute: '2-digit' });
  }

  function fmtAgo(ms) {
    if (!ms) return '';
    return fmtDuration((Date.now() - ms) / 1000) + ' ago';
  }

  /* Unix minutes or hours (a count since the epoch), seconds or milliseconds: to milliseconds. */
  function toMs(value, unitMs) {
    if (value > 1e11) return value;
    if (value > 1e9) return value * 1000;
    return value * unitMs;
  }

  function timeNode(ms) {
    if (!ms) return el('span', { text: '—' });
    return el('time', {
      datetime: new Date(ms).toISOString(), title: fmtAgo(ms), text: fmtTime(ms)
    });
  }

  function plural(n, one, many) {
    return fmtCount(n) + ' ' + (n === 1 ? one : many);
  }

  // ---------------------------------------------------------------- the token and the API

  function getToken() {
    try {
      return window.sessionStorage.getItem(TOKEN_KEY);
    } catch (error) {
      return null;
    }
  }

  function setToken(token) {
    try {
      if (token) window.sessionStorage.setItem(TOKEN_KEY, token);
      else window.sessionStorage.removeItem(TOKEN_KEY);
    } catch (error) {
      // storage disabled: the token lives until the page is left
    }
    state.memoryToken = token;
  }

  function currentToken() {
    return getToken() || state.memoryToken || null;
  }

  class Unauthorized extends Error {
    constructor() {
      super('The admin token was not accepted');
      this.name = 'Unauthorized';
    }
  }

  async function api(path, body) {
    const token = currentToken();
    if (!token) throw new Unauthorized();
    const init = {
      method: body === undefined ? 'GET' : 'POST',
      headers: { Accept: 'application/json', Authorization: 'Bearer ' + token },
      credentials: 'omit',
      cache: 'no-store'
    };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.status === 401) throw new Unauthorized();
    let data = null;
    try {
      data = await response.json();
    } catch (error) {
      data = null;
    }
    if (!response.ok) {
      let message = data && data.error ? data.error : 'HTTP ' + response.status;
      if (data && data.field) message += ' (' + data.field + ')';
      throw new Error(message);
    }
    return data;
  }

  // ---------------------------------------------------------------- signing in and out

  /* Other panels in their own files (explorer.js) share the token and the API through these. */
  function announce(name, detail) {
    document.dispatchEvent(new CustomEvent('ttgw:' + name, { detail: detail }));
  }

  function askForToken(message) {
    announce('signed-out', {});
    state.generation += 1;
    clearTimeout(state.timer);
    setToken(null);
    resetViews();
    show(byId('dashboard'), false);
    show(byId('tools'), false);
    show(byId('status'), false);
    show(byId('notice'), false);
    show(byId('sign-in'), true);
    const error = byId('sign-in-error');
    error.textContent = message || '';
    show(error, Boolean(message));
    byId('test-code').value = '';
    const input = byId('token');
    input.value = '';
    input.focus();
  }

  function onSignIn(event) {
    event.preventDefault();
    const value = byId('token').value.trim();
    if (!value) return;
    setToken(value);
    byId('token').value = '';
    show(byId('sign-in-error'), false);
    refresh();
  }

  function onSignOut(event) {
    event.preventDefault();
    askForToken('');
  }

  /* Forget every value shown, so nothing stays on screen after signing out. */
  function resetViews() {
    ['queue', 'deliveries-legend', 'deliveries-chart', 'deliveries-totals', 'coverage-event',
      'coverage-alerts', 'coverage-legend', 'coverage-note', 'coverage-chart', 'test-pixel',
      'test-result', 'replay-result', 'updated', 'status'].forEach(function (id) {
      const node = byId(id);
      clear(node);
      node.removeAttribute('data-options');
      node.removeAttribute('data-keys');
    });
    ['coverage-table', 'paused-table', 'failures-table'].forEach(function (id) {
      clear(byId(id).tBodies[0]);
    });
    document.dispatchEvent(new CustomEvent('ttgw:reset')); // health.js forgets its figures
    state.stats = null;
    state.integrations = [];
    state.sandbox = false;
    state.coverageEvent = null;
    state.failuresShown = null;
    state.hiddenKeys.clear();
  }

  // ---------------------------------------------------------------- loading

  async function refresh() {
    const generation = ++state.generation;
    clearTimeout(state.timer);
    try {
      const stats = await api(API.stats); // alone first: a wrong token is refused once
      const answers = await Promise.all([api(API.dead), api(API.integrations)]);
      if (generation !== state.generation) return;
      render(stats, answers[0], answers[1]);
      show(byId('notice'), false);
    } catch (error) {
      if (generation !== state.generation) return;
      if (error instanceof Unauthorized) {
        askForToken('That token was not accepted. Enter the admin token again.');
        return;
      }
      const notice = byId('notice');
      notice.textContent = 'Could not load the data (' + error.message + '). ' +
        'Trying again in ' + REFRESH_MS / 1000 + ' s.';
      show(notice, true);
    }
    state.timer = setTimeout(refresh, REFRESH_MS);
  }

  function render(stats, dead, integrations) {
    state.stats = stats;
    state.integrations = integrations.integrations || [];
    state.sandbox = Boolean(integrations.sandbox);
    show(byId('sign-in'), false);
    show(byId('dashboard'), true);
    show(byId('tools'), true);
    renderStatus(stats);
    renderQueue(stats);
    renderDeliveries(stats);
    renderCoverage(stats.coverage, stats.alerts || []);
    document.dispatchEvent(new CustomEvent('ttgw:stats', { detail: stats })); // health.js
    renderPaused(stats.paused || []);
    renderWarnings(stats.warnings || {});
    renderFailures(dead.events || [], dead.next_cursor, stats.queue.dead);
    renderTestPixels(state.integrations);
    announce('refreshed', {
      api: api, sandbox: state.sandbox, integrations: state.integrations,
      signOut: function () { askForToken('That token was not accepted. Enter the admin token again.'); }
    });
    byId('updated').textContent = 'Updated ' + fmtClock(Date.now()) + ' · every ' +
      REFRESH_MS / 1000 + ' s';
  }

  // ---------------------------------------------------------------- (1) queue health

  function pixelName(code) {
    const found = state.integrations.filter(function (i) { return i.pixel_code === code; })[0];
    return found && found.name ? found.name + ' (' + code + ')' : code;
  }

  function renderStatus(stats) {
    const queue = stats.queue;
    const paused = stats.paused || [];
    const minutes = stats.minutes || [];
    const recent = minutes.reduce(function (sum, m) { return sum + m.accepted + m.delivered; }, 0);
    let text;
    let level;
    if (paused.length) {
      level = 'bad';
      text = 'Paused: pixel ' + paused.map(function (p) {
        return pixelName(p.pixel) + ' (' + (p.message || p.reason) + ')';
      }).join(', ');
    } else if (queue.dead > 0) {
      level = 'bad';
      text = 'Stuck: ' + plural(queue.dead, 'dead letter', 'dead letters') +
        ' (see “Latest failures”)';
    } else if (queue.retrying > 0) {
      level = 'warn';
      text = 'Retrying: ' + plural(queue.retrying, 'event waits', 'events wait') +
        ' for another try';
    } else if ((stats.alerts || []).length) {
      level = 'warn';
      text = 'Match keys dropped: ' + stats.alerts.map(alertText).join('; ');
    } else if (recent === 0 && queue.depth === 0) {
      level = 'idle';
      text = 'Idle: no conversions in the last hour';
    } else {
      level = 'ok';
      text = 'Conversions are flowing';
    }
    const node = byId('status');
    node.className = 'status status-' + level;
    if (node.textContent !== text) node.textContent = text; // a live region: announce changes
    show(node, true);
  }

  function renderQueue(stats) {
    const queue = stats.queue;
    show(byId('sandbox'), Boolean(stats.sandbox));
    const figures = [
      ['In the queue', fmtCount(queue.depth), 'events waiting to be sent', ''],
      ['Being sent', fmtCount(queue.pending), 'read by a worker, not yet settled', ''],
      ['Retrying', fmtCount(queue.retrying), 'waiting for their next try',
        queue.retrying > 0 ? 'warn' : ''],
      ['Dead letters', fmtCount(queue.dead), 'need a replay or a fix',
        queue.dead > 0 ? 'bad' : ''],
      ['Oldest waiting', fmtDuration(queue.oldest_age_s), 'age of the oldest queued event', ''],
      ['Lag', queue.lag === null || queue.lag === undefined ? '—' : fmtCount(queue.lag),
        'events no worker has read yet', '']
    ];
    const list = byId('queue');
    clear(list);
    figures.forEach(function (f) {
      list.appendChild(el('div', { className: 'figure' + (f[3] ? ' figure-' + f[3] : '') }, [
        el('dt', { text: f[0] }),
        el('dd', {}, [el('span', { className: 'value', text: f[1] }),
          el('span', { className: 'hint', text: f[2] })])
      ]));
    });
  }

  // ---------------------------------------------------------------- charts (plain SVG)

  /* A "nice" upper bound and step for a count axis. */
  function niceScale(max, ticks) {
    if (!(max > 0)) return { max: 1, step: 1 };
    const rough = max / ticks;
    const power = Math.pow(10, Math.floor(Math.log10(rough)));
    let step = [1, 2, 5, 10].map(function (m) { return m * power; })
      .filter(function (s) { return s >= rough; })[0];
    step = Math.max(1, step);
    return { max: Math.ceil(max / step) * step, step: step };
  }

  /* Path data for values (null breaks the line); returns the isolated points too. */
  function linePath(values, x, y) {
    const parts = [];
    const lone = [];
    let run = 0;
    values.forEach(function (v, i) {
      if (v === null || v === undefined || isNaN(v)) {
        if (run === 1) lone.push(i - 1);
        run = 0;
        return;
      }
      parts.push((run === 0 ? 'M' : 'L') + x(i).toFixed(1) + ' ' + y(v).toFixed(1));
      run += 1;
    });
    if (run === 1) lone.push(values.length - 1);
    return { d: parts.join(' '), lone: lone };
  }

  /* A line chart: options.series [{label, className, values}], options.times (ms),
   * options.yMax/yStep/yLabel, options.xLabel(ms), options.xTicks (indices),
   * options.bars (optional background volume), options.hover(i) -> text. */
  function lineChart(container, options) {
    const width = 720;
    const height = 240;
    const pad = { left: 48, right: 12, top: 12, bottom: 28 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const n = options.times.length;
    // a few points (a new install's first hours) sit in the middle of their slots, off the axes
    const inset = n > 1 && n <= 48 ? plotW / n / 2 : 0;
    const x = function (i) {
      return pad.left + (n > 1 ? inset + (i * (plotW - 2 * inset)) / (n - 1) : plotW / 2);
    };
    const y = function (v) { return pad.top + plotH - (v / options.yMax) * plotH; };
    const chart = chartFrame(container, width, height, options);

    const grid = svg('g', { class: 'grid' });
    for (let v = 0; v <= options.yMax + 1e-9; v += options.yStep) {
      grid.appendChild(svg('line', {
        x1: pad.left, x2: width - pad.right, y1: y(v).toFixed(1), y2: y(v).toFixed(1)
      }));
      const label = svg('text', { x: pad.left - 6, y: (y(v) + 4).toFixed(1), class: 'y-label' });
      label.textContent = options.yLabel(v);
      grid.appendChild(label);
    }
    options.xTicks.forEach(function (i) {
      let anchor = 'middle';
      if (x(i) < pad.left + 24) anchor = 'start';
      else if (x(i) > width - pad.right - 24) anchor = 'end';
      const tick = svg('text', {
        x: x(i).toFixed(1), y: height - 8, class: 'x-label', 'text-anchor': anchor
      });
      tick.textContent = options.xLabel(options.times[i]);
      grid.appendChild(tick);
    });
    chart.appendChild(grid);

    if (options.bars) {
      const bars = svg('g', { class: 'bars' });
      const barMax = Math.max.apply(null, options.bars.concat([1]));
      // a few hours make wide slots: a bar stays narrow and inside the plot
      const barW = Math.min(24, Math.max(1, plotW / Math.max(1, n) - 0.5));
      options.bars.forEach(function (b, i) {
        if (!b) return;
        const h = (b / barMax) * plotH * 0.35;
        const left = Math.max(pad.left, x(i) - barW / 2);
        const right = Math.min(width - pad.right, x(i) + barW / 2);
        bars.appendChild(svg('rect', {
          x: left.toFixed(1), y: (pad.top + plotH - h).toFixed(1),
          width: (right - left).toFixed(1), height: h.toFixed(1)
        }));
      });
      chart.appendChild(bars);
    }

    options.series.forEach(function (s) {
      const line = linePath(s.values, x, y);
      const group = svg('g', { class: 'series ' + s.className });
      group.appendChild(svg('path', { d: line.d || 'M0 0', class: 'line' }));
      line.lone.forEach(function (i) {
        group.appendChild(svg('circle', {
          cx: x(i).toFixed(1), cy: y(s.values[i]).toFixed(1), r: n > 48 ? 3.5 : 5, class: 'dot'
        }));
      });
      chart.appendChild(group);
    });

    // one transparent column per point, with its values as a tooltip
    const hover = svg('g', { class: 'hover' });
    const colW = n > 1 ? plotW / (n - 1) : plotW;
    for (let i = 0; i < n; i++) {
      const column = svg('rect', {
        x: (x(i) - colW / 2).toFixed(1), y: pad.top, width: colW.toFixed(2), height: plotH
      });
      const tip = svg('title');
      tip.textContent = options.hover(i);
      column.appendChild(tip);
      hover.appendChild(column);
    }
    chart.appendChild(hover);

    clear(container);
    container.appendChild(chart);
  }

  /* An accessible SVG chart of width x height, titled and described for screen readers. */
  function chartFrame(container, width, height, options) {
    const titleId = container.id + '-title';
    const descId = container.id + '-desc';
    const chart = svg('svg', {
      viewBox: '0 0 ' + width + ' ' + height, role: 'img', class: 'svg-chart',
      'aria-labelledby': titleId + ' ' + descId, preserveAspectRatio: 'xMidYMid meet'
    });
    const title = svg('title', { id: titleId });
    title.textContent = options.title;
    const desc = svg('desc', { id: descId });
    desc.textContent = options.description;
    chart.appendChild(title);
    chart.appendChild(desc);
    return chart;
  }

  /* Bars for one moment: options.items [{label, className, value (0-1 or null)}], one slot
   * each across the width, value on top, label below; options.hover() -> text. */
  function shareBars(container, options) {
    const width = 720;
    const height = 240;
    const pad = { left: 48, right: 12, top: 20, bottom: 28 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const y = function (v) { return pad.top + plotH - v * plotH; };
    const chart = chartFrame(container, width, height, options);
    const grid = svg('g', { class: 'grid' });
    for (let v = 0; v <= 1 + 1e-9; v += 0.25) {
      grid.appendChild(svg('line', {
        x1: pad.left, x2: width - pad.right, y1: y(v).toFixed(1), y2: y(v).toFixed(1)
      }));
      const label = svg('text', { x: pad.left - 6, y: (y(v) + 4).toFixed(1), class: 'y-label' });
      label.textContent = fmtShare(v);
      grid.appendChild(label);
    }
    chart.appendChild(grid);
    const slot = plotW / Math.max(1, options.items.length);
    const barW = Math.min(56, slot * 0.6);
    options.items.forEach(function (item, i) {
      const middle = pad.left + slot * i + slot / 2;
      const value = item.value === null || item.value === undefined ? 0 : item.value;
      const group = svg('g', { class: 'series ' + item.className });
      const bar = svg('rect', {
        x: (middle - barW / 2).toFixed(1), y: y(value).toFixed(1), width: barW.toFixed(1),
        height: Math.max(value * plotH, 1).toFixed(1), class: 'share-bar'
      });
      const tip = svg('title');
      tip.textContent = item.label + ': ' + fmtShare(item.value) + ' · ' + options.hover();
      bar.appendChild(tip);
      group.appendChild(bar);
      const share = svg('text', {
        x: middle.toFixed(1), y: (y(value) - 5).toFixed(1), 'text-anchor': 'middle',
        class: 'bar-value'
      });
      share.textContent = fmtShare(item.value);
      group.appendChild(share);
      const label = svg('text', {
        x: middle.toFixed(1), y: height - 8, 'text-anchor': 'middle', class: 'x-label'
      });
      label.textContent = item.label;
      group.appendChild(label);
      chart.appendChild(group);
    });
    clear(container);
    container.appendChild(chart);
  }

  /* Indices of the hours to label: midnights over several days, else every 1, 2, 3, 6 or 12
   * hours, whichever gives at most eight labels. */
  function hourTicks(times) {
    const hourOf = function (ms) { return new Date(ms).getHours(); };
    const ticks = [];
    if (times.length > 48) {
      times.forEach(function (ms, i) { if (hourOf(ms) === 0) ticks.push(i); });
      return ticks;
    }
    const step = [1, 2, 3, 6, 12].filter(function (k) { return times.length / k <= 8; })[0] || 24;
    times.forEach(function (ms, i) { if (hourOf(ms) % step === 0) ticks.push(i); });
    return ticks;
  }

  // ---------------------------------------------------------------- (2) deliveries

  function renderDeliveries(stats) {
    const minutes = stats.minutes || [];
    const times = minutes.map(function (m) { return toMs(m.minute, 60000); });
    const totals = {};
    let max = 0;
    DELIVERY_SERIES.forEach(function (s) {
      totals[s.name] = minutes.reduce(function (sum, m) {
        max = Math.max(max, m[s.name] || 0);
        return sum + (m[s.name] || 0);
      }, 0);
    });
    const scale = niceScale(max, 4);
    const legend = byId('deliveries-legend');
    clear(legend);
    DELIVERY_SERIES.forEach(function (s) {
      legend.appendChild(el('li', { className: 'd-' + s.name }, [
        el('span', { className: 'swatch' }),
        el('span', { text: s.label + ' ' + fmtCount(totals[s.name]) })
      ]));
    });
    const ticks = [];
    for (let i = 0; i < times.length; i += 15) ticks.push(i);
    if (times.length) ticks.push(times.length - 1);
    lineChart(byId('deliveries-chart'), {
      title: 'Events per minute, last 60 minutes',
      description: DELIVERY_SERIES.map(function (s) {
        return fmtCount(totals[s.name]) + ' ' + s.label;
      }).join(', ') + ' in the last 60 minutes.',
      times: times,
      series: DELIVERY_DRAW_ORDER.map(function (name) {
        return {
          className: 'd-' + name,
          values: minutes.map(function (m) { return m[name] || 0; })
        };
      }),
      yMax: scale.max,
      yStep: scale.step,
      yLabel: fmtCount,
      xTicks: ticks,
      xLabel: fmtClock,
      hover: function (i) {
        const m = minutes[i];
        return fmtClock(times[i]) + ': ' + DELIVERY_SERIES.map(function (s) {
          return fmtCount(m[s.name] || 0) + ' ' + s.label;
        }).join(', ');
      }
    });
    const c = stats.counters || {};
    byId('deliveries-totals').textContent = 'All time: ' + [
      ['accepted', 'accepted'], ['delivered', 'delivered'], ['duplicate', 'duplicate', 'duplicates'],
      ['suppressed', 'suppressed by consent'], ['retried', 'retried'], ['dead', 'dead'],
      ['replayed', 'replayed']
    ].map(function (p) { return plural(c[p[0]] || 0, p[1], p[2] || p[1]); }).join(' · ') + '.';
  }

  // ---------------------------------------------------------------- (3) match-key coverage

  function eventNames(coverage) {
    const events = coverage.events || {};
    const volume = function (name) {
      return (events[name].total || []).reduce(function (a, b) { return a + b; }, 0);
    };
    return Object.keys(events).sort(function (a, b) {
      return volume(b) - volume(a) || a.localeCompare(b);
    });
  }

  function chooseEvent(names, alerts) {
    if (state.coverageEvent && names.indexOf(state.coverageEvent) >= 0) return state.coverageEvent;
    const alerted = alerts.map(function (a) { return a.event; })
      .filter(function (n) { return names.indexOf(n) >= 0; });
    if (alerted.length) return alerted[0];
    const preferred = PREFERRED_EVENTS.filter(function (n) { return names.indexOf(n) >= 0; });
    return preferred.length ? preferred[0] : names[0];
  }

  /* The share of events with the key over hours [from, to), weighted by the hour's volume. */
  function weightedShare(data, key, from, to) {
    let total = 0;
    let carried = 0;
    for (let h = Math.max(0, from); h < to; h++) {
      const t = data.total[h] || 0;
      const share = data[key] ? data[key][h] : null;
      if (!t || share === null || share === undefined) continue;
      total += t;
      carried += share * t;
    }
    return total ? carried / total : null;
  }

  function alertText(alert) {
    const what = KEY_PLURALS[alert.key] || alert.key;
    const verb = alert.today < alert.yesterday / 4 ? 'stopped arriving on ' : 'dropped on ';
    return what + ' ' + verb + alert.event + ': ' + fmtShare(alert.yesterday) + ' → ' +
      fmtShare(alert.today);
  }

  /* One checkbox per key, built once per key list (a refresh keeps focus and choices). */
  function renderKeyToggles(keys) {
    const legend = byId('coverage-legend');
    const signature = keys.join(',');
    if (legend.getAttribute('data-keys') !== signature) {
      clear(legend);
      keys.forEach(function (key, index) {
        const id = 'key-toggle-' + index;
        const box = el('input', { type: 'checkbox', id: id, 'data-key': key });
        box.addEventListener('change', function () {
          if (box.checked) state.hiddenKeys.delete(key);
          else state.hiddenKeys.add(key);
          if (state.stats) renderCoverage(state.stats.coverage, state.stats.alerts || []);
        });
        legend.appendChild(el('label', { className: 'toggle k-' + index, for: id }, [
          box, el('span', { className: 'swatch' }), el('span', { text: KEY_LABELS[key] || key })
        ]));
      });
      legend.setAttribute('data-keys', signature);
    }
    Array.prototype.forEach.call(legend.querySelectorAll('input'), function (box) {
      box.checked = !state.hiddenKeys.has(box.getAttribute('data-key'));
    });
  }

  function renderCoverage(coverage, alerts) {
    coverage = coverage || { keys: [], hours: [], events: {} };
    const names = eventNames(coverage);
    const chosen = chooseEvent(names, alerts);
    state.coverageEvent = chosen || null;

    const select = byId('coverage-event');
    setOptions(select, names.map(function (name) { return [name, name]; }));
    select.disabled = names.length === 0;
    if (chosen) select.value = chosen;

    const alertList = byId('coverage-alerts');
    clear(alertList);
    alerts.forEach(function (a) {
      alertList.appendChild(el('li', { className: 'alert', text: alertText(a) }));
    });
    show(alertList, alerts.length > 0);

    const chart = byId('coverage-chart');
    const tbody = byId('coverage-table').tBodies[0];
    clear(tbody);
    if (!chosen) {
      clear(chart);
      chart.appendChild(el('p', { className: 'muted', text: 'No events in the last 7 days.' }));
      show(byId('coverage-note'), false);
      byId('coverage-caption').textContent = 'Current coverage';
      return;
    }
    const data = coverage.events[chosen];
    const keys = coverage.keys || [];
    const times = (coverage.hours || []).map(function (h) { return toMs(h, 3600000); });
    const n = times.length;
    const alerted = {};
    alerts.forEach(function (a) { if (a.event === chosen) alerted[a.key] = a; });

    renderKeyToggles(keys);

    let last = 0;
    let first = n;
    let hoursWithEvents = 0;
    for (let h = 0; h < n; h++) {
      if (!data.total[h]) continue;
      hoursWithEvents += 1;
      last = h;
      if (first === n) first = h;
    }
    const volume = data.total.reduce(function (a, b) { return a + b; }, 0);
    const description = plural(volume, chosen + ' event', chosen + ' events') +
      ' delivered in the last 7 days. Latest hour: ' +
      keys.map(function (k) {
        return (KEY_LABELS[k] || k) + ' ' + fmtShare(data[k] ? data[k][last] : null);
      }).join(', ') + '.';
    // keys with an alert are drawn last, on top of the lines they would hide behind
    const shown = keys.map(function (key, index) {
      return { key: key, index: index };
    }).filter(function (s) {
      return !state.hiddenKeys.has(s.key);
    }).sort(function (a, b) {
      return (alerted[a.key] ? 1 : 0) - (alerted[b.key] ? 1 : 0) || a.index - b.index;
    });
    const note = byId('coverage-note');
    const hover = function (i) {
      const t = data.total[i] || 0;
      if (!t) return fmtHour(times[i]) + ': no ' + chosen + ' events';
      return fmtHour(times[i]) + ': ' + plural(t, chosen + ' event', chosen + ' events') +
        '; ' + keys.map(function (k) {
          return (KEY_LABELS[k] || k) + ' ' + fmtShare(data[k] ? data[k][i] : null);
        }).join(', ');
    };

    if (volume > 0 && hoursWithEvents < COVERAGE_HOURS_MIN_SPAN) {
      // a new install: one hour of data would be a stack of dots at the right edge
      note.textContent = 'Collecting data: ' + chosen + ' events in one hour so far (' +
        fmtHour(times[last]) + '), one bar per key. From the second hour on, the chart shows ' +
        'the hours since the first, widening to 7 days.';
      show(note, true);
      shareBars(chart, {
        title: 'Share of ' + chosen + ' events carrying each match key, ' + fmtHour(times[last]),
        description: description,
        items: shown.map(function (s) {
          return {
            label: KEY_LABELS[s.key] || s.key,
            className: 'k-' + s.index + (alerted[s.key] ? ' alerted' : ''),
            value: data[s.key] ? data[s.key][last] : null
          };
        }),
        hover: function () { return hover(last); }
      });
    } else {
      // before 7 days of data, the window starts at the first hour with events
      const from = volume > 0 ? first : 0;
      const span = n - from;
      if (from > 0) {
        note.textContent = 'Collecting data: the first ' + plural(span, 'hour', 'hours') +
          ' (since ' + fmtHour(times[from]) + '). The chart widens to 7 days as data arrives.';
      }
      show(note, from > 0);
      const hours = times.slice(from);
      lineChart(chart, {
        title: 'Share of ' + chosen + ' events carrying each match key, per hour',
        description: description,
        times: hours,
        bars: data.total.slice(from),
        series: shown.map(function (s) {
          return {
            className: 'k-' + s.index + (alerted[s.key] ? ' alerted' : ''),
            values: (data[s.key] || []).slice(from)
          };
        }),
        yMax: 1,
        yStep: 0.25,
        yLabel: fmtShare,
        xTicks: hourTicks(hours),
        xLabel: span > 48 ? function (ms) {
          const day = new Date(ms);
          return day.toLocaleDateString([], { weekday: 'short' }) + ' ' + day.getDate();
        } : fmtClock,
        hover: function (i) { return hover(i + from); }
      });
    }

    byId('coverage-caption').textContent = 'Coverage of ' + chosen + ': ' +
      plural(volume, 'event', 'events') + ' delivered in 7 days; latest hour with events: ' +
      (volume ? fmtHour(times[last]) : 'none');
    keys.forEach(function (key, index) {
      const row = el('tr', { className: alerted[key] ? 'alert-row' : '' }, [
        el('th', { scope: 'row' }, [
          el('span', { className: 'swatch k-' + index }),
          el('span', { text: KEY_LABELS[key] || key }),
          alerted[key] ? el('span', { className: 'badge', text: 'dropped' }) : null
        ]),
        el('td', { text: fmtShare(data[key] && data.total[last] ? data[key][last] : null) }),
        el('td', { text: fmtShare(weightedShare(data, key, n - 24, n)) }),
        el('td', { text: fmtShare(weightedShare(data, key, n - 48, n - 24)) })
      ]);
      tbody.appendChild(row);
    });
  }

  // ---------------------------------------------------------------- (4) paused integrations

  function answerText(code, httpStatus, message, requestId) {
    const parts = [];
    if (code !== null && code !== undefined) parts.push('code ' + code);
    if (httpStatus !== null && httpStatus !== undefined) parts.push('HTTP ' + httpStatus);
    if (message) parts.push(message);
    if (requestId) parts.push('request id ' + requestId);
    return parts.length ? parts.join(' · ') : '—';
  }

  function renderPaused(paused) {
    const table = byId('paused-table');
    const tbody = table.tBodies[0];
    clear(tbody);
    paused.forEach(function (p) {
      tbody.appendChild(el('tr', {}, [
        el('td', { text: pixelName(p.pixel) }),
        el('td', {}, [
          el('strong', { text: REASONS[p.reason] || p.reason || 'paused' }),
          el('div', { className: 'answer', text: answerText(p.code, p.http_status, p.message) })
        ]),
        el('td', {}, [timeNode(p.since_ms), el('div', { className: 'hint', text: fmtAgo(p.since_ms) })])
      ]));
    });
    show(table, paused.length > 0);
    show(byId('paused-empty'), paused.length === 0);
  }

  /* Fields dropped with a warning at ingest, by field, most frequent first (as the API sends). */
  function renderWarnings(warnings) {
    const table = byId('warnings-table');
    const tbody = table.tBodies[0];
    clear(tbody);
    const fields = Object.keys(warnings);
    fields.forEach(function (field) {
      tbody.appendChild(el('tr', {}, [
        el('td', {}, [el('code', { text: field })]),
        el('td', { className: 'num', text: fmtCount(warnings[field]) })
      ]));
    });
    show(table, fields.length > 0);
    show(byId('warnings-empty'), fields.length === 0);
  }

  // ---------------------------------------------------------------- (5) latest failures

  async function replay(body, button, what) {
    const result = byId('replay-result');
    button.disabled = true;
    result.className = 'muted';
    result.textContent = 'Replaying ' + what + '…';
    try {
      const answer = await api(API.replay, body);
      const queued = answer && typeof answer.queued === 'number' ? answer.queued : 0;
      result.className = queued ? 'ok-text' : 'muted';
      result.textContent = 'Replay: ' + plural(queued, 'event', 'events') +
        ' queued for delivery.';
    } catch (error) {
      if (error instanceof Unauthorized) {
        askForToken('That token was not accepted. Enter the admin token again.');
        return;
      }
      result.className = 'error';
      result.textContent = 'Replay failed: ' + error.message;
    }
    button.disabled = false;
    refresh();
  }

  /* The reason without TikTok's message when it only repeats it (shown in the next column). */
  function shortReason(reason, message) {
    if (!reason) return '—';
    const tail = ': ' + message;
    if (message && reason.length > tail.length && reason.slice(-tail.length) === tail) {
      return reason.slice(0, -tail.length);
    }
    return reason;
  }

  function renderFailures(events, nextCursor, deadCount) {
    const table = byId('failures-table');
    const signature = JSON.stringify(events);
    // rebuilt only when the rows change, so a refresh does not take the focus off a button
    if (signature !== state.failuresShown) renderFailureRows(table.tBodies[0], events);
    state.failuresShown = signature;
    show(table, events.length > 0);
    show(byId('failures-empty'), events.length === 0);
    byId('replay-all').disabled = events.length === 0;
    const shown = events.length;
    let caption = 'Dead letters: events TikTok refused or that ran out of retries, newest first.';
    if (nextCursor || deadCount > shown) {
      caption += ' Showing the latest ' + fmtCount(shown) + ' of ' + fmtCount(deadCount) + '.';
    }
    caption += ' Replay keeps the event id, so TikTok still deduplicates.';
    byId('failures-caption').textContent = caption;
  }

  function renderFailureRows(tbody, events) {
    clear(tbody);
    events.forEach(function (e) {
      const button = el('button', {
        type: 'button', className: 'replay', 'data-event-id': e.event_id,
        'aria-label': 'Replay ' + e.event + ' ' + e.event_id, text: 'Replay'
      });
      button.addEventListener('click', function () {
        replay({ event_ids: [e.event_id] }, button, 'event ' + e.event_id);
      });
      tbody.appendChild(el('tr', { 'data-event-id': e.event_id }, [
        el('td', {}, [timeNode(e.last_try_ms || e.received_ms)]),
        el('td', { text: e.event }),
        el('td', { className: 'mono', text: e.event_id }),
        el('td', { className: 'mono nowrap', text: e.pixel }),
        el('td', { text: shortReason(e.reason, e.message) }),
        el('td', {
          className: 'answer', text: answerText(e.code, e.http_status, e.message, e.request_id)
        }),
        el('td', { className: 'num', text: fmtCount(e.attempts) }),
        el('td', {}, [button])
      ]));
    });
  }

  function onReplayAll() {
    const count = state.stats ? state.stats.queue.dead : 0;
    const question = 'Replay all ' + plural(count, 'dead letter', 'dead letters') + '?';
    if (!window.confirm(question)) return;
    replay({ all: true }, byId('replay-all'), 'all dead letters');
  }

  // ---------------------------------------------------------------- (6) test event

  function renderTestPixels(integrations) {
    const select = byId('test-pixel');
    const items = integrations.map(function (i) {
      const notes = [];
      if (!i.enabled) notes.push('disabled');
      if (i.paused) notes.push('paused');
      if (!i.test_event_code) notes.push('no test event code');
      const label = (i.name ? i.name + ' · ' : '') + i.pixel_code +
        (notes.length ? ' (' + notes.join(', ') + ')' : '');
      return [i.pixel_code, label, !i.enabled]; // the API sends through enabled ones only
    });
    items.sort(function (a, b) { return (a[2] ? 1 : 0) - (b[2] ? 1 : 0); });
    // no pixel configured: the API sends to the built-in sandbox (no pixel named)
    if (state.sandbox) {
      items.unshift(['', 'Sandbox (no pixel configured; nothing leaves this machine)']);
    }
    const usable = items.some(function (item) { return !item[2]; });
    setOptions(select, items.length ? items : [['', 'No integration configured']]);
    select.disabled = !usable;
    byId('test-send').disabled = !usable;
    renderTestCode();
  }

  /* Whether the admin API (POST v1/admin/test-event) needs a code from the form: not in sandbox
   * mode, not when the integration keeps one; otherwise it refuses, since a test event without a
   * code would count in the pixel's reports. */
  function testCodeNeed() {
    if (state.sandbox) {
      return {
        required: false,
        label: '(optional)',
        help: 'Sandbox mode: the test event goes to the built-in sandbox, checked as TikTok ' +
          'would check it, with this code or none.'
      };
    }
    const pixel = byId('test-pixel').value;
    const chosen = state.integrations.filter(function (i) { return i.pixel_code === pixel; })[0];
    if (chosen && chosen.test_event_code) {
      return {
        required: false,
        label: '(optional)',
        help: 'Leave it empty to use the integration\'s own code (' + chosen.test_event_code +
          '); find codes in Events Manager › Test events.'
      };
    }
    return {
      required: true,
      label: '(required)',
      help: 'This integration has no test event code (TTGW_TEST_EVENT_CODE or the ' +
        'integration\'s test_event_code): enter one from Events Manager › Test events, so the ' +
        'event shows there and not in your reports.'
    };
  }

  function renderTestCode() {
    const need = testCodeNeed();
    const input = byId('test-code');
    input.required = need.required;
    byId('test-code-need').textContent = need.label;
    byId('test-code-help').textContent = need.help;
    if (!need.required || input.value.trim()) input.removeAttribute('aria-invalid');
  }

  function testResult(className, text) {
    const result = byId('test-result');
    clear(result);
    result.appendChild(el('p', { className: className, text: text }));
    return result;
  }

  async function onTestEvent(event) {
    event.preventDefault();
    const pixel = byId('test-pixel').value;
    const input = byId('test-code');
    const code = input.value.trim();
    const button = byId('test-send');
    if (!pixel && !state.sandbox) return;
    if (testCodeNeed().required && !code) {
      input.setAttribute('aria-invalid', 'true');
      testResult('error', 'Not sent: enter a test event code; ' + pixel +
        ' has none of its own (Events Manager › Test events).');
      input.focus();
      return;
    }
    input.removeAttribute('aria-invalid');
    const where = pixel || 'the sandbox';
    button.disabled = true;
    testResult('muted', 'Sending a test event to ' + where + '…');
    try {
      const body = pixel ? { pixel: pixel } : {};
      if (code) body.test_event_code = code;
      const answer = await api(API.testEvent, body);
      const ok = answer.verdict === 'delivered';
      let text = ok ? 'TikTok accepted the test event.' : 'TikTok did not accept the test event.';
      if (state.sandbox) {
        text = ok ? 'The sandbox accepted the test event (nothing was sent to TikTok).'
          : 'The sandbox did not accept the test event.';
      }
      const result = testResult(ok ? 'ok-text' : 'error', text);
      const rows = [
        ['Verdict', answer.verdict], ['HTTP status', answer.http_status],
        ['TikTok code', answer.code], ['Message', answer.message],
        ['Request id', answer.request_id], ['Event id', answer.event_id],
        ['Pixel', answer.pixel], ['Test event code', answer.test_event_code]
      ];
      result.appendChild(el('dl', { className: 'answer-list' }, rows.reduce(function (all, r) {
        const value = r[1] === null || r[1] === undefined || r[1] === '' ? '—' : String(r[1]);
        return all.concat([el('dt', { text: r[0] }), el('dd', { text: value })]);
      }, [])));
    } catch (error) {
      if (error instanceof Unauthorized) {
        askForToken('That token was not accepted. Enter the admin token again.');
        return;
      }
      testResult('error', 'Not sent: ' + error.message);
    }
    button.disabled = false;
  }

  // ---------------------------------------------------------------- start

  function start() {
    byId('sign-in-form').addEventListener('submit', onSignIn);
    byId('sign-out').addEventListener('click', onSignOut);
    byId('refresh').addEventListener('click', function () { refresh(); });
    byId('replay-all').addEventListener('click', onReplayAll);
    byId('test-form').addEventListener('submit', onTestEvent);
    byId('test-pixel').addEventListener('change', renderTestCode);
    byId('test-code').addEventListener('input', renderTestCode);
    byId('coverage-event').addEventListener('change', function (event) {
      state.coverageEvent = event.target.value;
      if (state.stats) renderCoverage(state.stats.coverage, state.stats.alerts || []);
    });
    document.addEventListener('visibilitychange', function () {
      if (document.visibilityState === 'visible' && currentToken()) refresh();
    });
    if (currentToken()) refresh();
    else askForToken('');
  }

  start();
})();
