/* Attribution health on the operator dashboard (issue 17).
 *
 * Reads the `health` part of GET v1/admin/stats, handed over by dashboard.js in a `ttgw:stats`
 * event; forgets everything on `ttgw:reset` (sign-out). Text reaches the page only through
 * textContent and attribute values. With fewer than a day of data the chart shows one bar per
 * share ("collecting data: N hours"), not a degenerate line; then one line per share over the
 * 168 hours, broken where an hour had no events.
 */
(function () {
  'use strict';

  const SVG_NS = 'http://www.w3.org/2000/svg';
  const SHARES = [
    { name: 'ttclid', label: 'ttclid' },
    { name: 'strong', label: 'strong key' },
    { name: 'ipua', label: 'IP + user agent' }
  ];
  const PREFERRED = ['Purchase', 'PlaceAnOrder', 'InitiateCheckout'];
  const LINES_FROM_HOURS = 24; // fewer hours since the first count: bars, not lines
  const WIDTH = 720;
  const HEIGHT = 200;
  const PAD = { left: 40, right: 10, top: 10, bottom: 24 };
  const state = { health: null, event: null, source: 'all' };

  function byId(id) {
    return document.getElementById(id);
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    Object.keys(attrs || {}).forEach(function (k) {
      node.setAttribute(k, String(attrs[k]));
    });
    return node;
  }

  function pct(share) {
    return share === null || share === undefined ? '–' : Math.round(share * 100) + ' %';
  }

  function sourceLabel(source) {
    return source === 'all' ? 'All sources' : source;
  }

  function fill(select, values, chosen, label) {
    const wanted = JSON.stringify(values);
    if (select.getAttribute('data-options') !== wanted) {
      clear(select);
      values.forEach(function (value) {
        const option = el('option', label ? label(value) : value);
        option.value = value;
        select.appendChild(option);
      });
      select.setAttribute('data-options', wanted);
    }
    select.value = chosen;
  }

  function chooseEvent(names) {
    if (state.event && names.indexOf(state.event) >= 0) return state.event;
    for (let i = 0; i < PREFERRED.length; i++) {
      if (names.indexOf(PREFERRED[i]) >= 0) return PREFERRED[i];
    }
    return names[0] || null;
  }

  function cell(summary, name) {
    if (!summary || !summary.total) return '–';
    return pct(summary[name + '_share']) + ' (' + summary[name] + ' of ' + summary.total + ')';
  }

  function renderTable(event) {
    const body = byId('health-table').tBodies[0];
    clear(body);
    Object.keys(event.week).forEach(function (source) {
      const week = event.week[source];
      const day = event.day[source];
      const row = el('tr');
      row.setAttribute('data-source', source);
      row.appendChild(el('th', sourceLabel(source))).setAttribute('scope', 'row');
      row.appendChild(el('td', String(week.total) + (day ? ' [' + day.total + ']' : '')));
      SHARES.forEach(function (share) {
        const td = el('td', cell(week, share.name));
        td.setAttribute('data-share', share.name);
        if (day && day.total) td.appendChild(el('span', ' [' + pct(day[share.name + '_share']) + ']', 'muted'));
        row.appendChild(td);
      });
      body.appendChild(row);
    });
  }

  function renderMirror(event) {
    const node = byId('health-mirror');
    const week = event.mirror_week;
    if (!week.pixel) {
      node.textContent = 'Server twins: no pixel events (browser copies) in the last 7 days.';
      return;
    }
    node.textContent = 'Server twins (mirror mode): ' + pct(week.twin_share) + ' — ' +
      week.twin + ' of ' + week.pixel + ' pixel events also arrived from the server, Segment or ' +
      'a webhook (last 24 h: ' + pct(event.mirror_day.twin_share) + ').';
  }

  function yOf(share) {
    return PAD.top + (1 - share) * (HEIGHT - PAD.top - PAD.bottom);
  }

  function axes(chart) {
    [0, 0.5, 1].forEach(function (v) {
      chart.appendChild(svg('line', { x1: PAD.left, x2: WIDTH - PAD.right, y1: yOf(v), y2: yOf(v),
        class: 'grid' }));
      const label = svg('text', { x: PAD.left - 6, y: yOf(v) + 4, 'text-anchor': 'end' });
      label.textContent = Math.round(v * 100) + '%';
      chart.appendChild(label);
    });
  }

  function renderBars(chart, summary) {
    const span = (WIDTH - PAD.left - PAD.right) / SHARES.length;
    SHARES.forEach(function (share, i) {
      const value = summary ? summary[share.name + '_share'] || 0 : 0;
      const x = PAD.left + i * span + span * 0.2;
      chart.appendChild(svg('rect', { x: x, y: yOf(value), width: span * 0.6,
        height: yOf(0) - yOf(value), class: 'health-bar health-' + share.name }));
      const label = svg('text', { x: x + span * 0.3, y: HEIGHT - 6, 'text-anchor': 'middle' });
      label.textContent = share.label + ' ' + pct(summary ? summary[share.name + '_share'] : null);
      chart.appendChild(label);
    });
  }

  function renderLines(chart, series, from) {
    const n = series.total.length;
    const x = function (i) {
      return PAD.left + ((i - from) / Math.max(1, n - 1 - from)) * (WIDTH - PAD.left - PAD.right);
    };
    SHARES.forEach(function (share) {
      let d = '';
      let pen = 'M';
      for (let i = from; i < n; i++) {
        if (!series.total[i]) {
          pen = 'M';
          continue;
        }
        d += pen + x(i).toFixed(1) + ' ' + yOf(series[share.name][i] / series.total[i]).toFixed(1) + ' ';
        pen = 'L';
      }
      const path = svg('path', { d: d.trim(), class: 'line health-' + share.name });
      const title = svg('title');
      title.textContent = share.label;
      path.appendChild(title);
      chart.appendChild(path);
    });
  }

  function renderChart(health, event) {
    const holder = byId('health-chart');
    clear(holder);
    const note = byId('health-note');
    const last = health.hours[health.hours.length - 1];
    const collected = health.first_hour === null ? 0 : last - health.first_hour + 1;
    const series = event.sources[state.source] || event.sources.all;
    const chart = svg('svg', { viewBox: '0 0 ' + WIDTH + ' ' + HEIGHT, role: 'img',
      'aria-label': 'Attribution shares, ' + sourceLabel(state.source) });
    axes(chart);
    if (collected < LINES_FROM_HOURS) {
      note.textContent = 'Collecting data: ' + collected + (collected === 1 ? ' hour' : ' hours') +
        '. Bars show the shares so far; hourly lines appear after a day.';
      note.hidden = false;
      renderBars(chart, event.week[state.source] || event.week.all);
    } else {
      note.hidden = true;
      const from = Math.max(0, health.hours.indexOf(health.first_hour));
      if (series) renderLines(chart, series, from);
    }
    holder.appendChild(chart);
    const legend = el('p', null, 'health-legend');
    SHARES.forEach(function (share) {
      legend.appendChild(el('span', share.label, 'hl-key health-' + share.name));
    });
    holder.appendChild(legend);
  }

  function renderAlerts(alerts) {
    const list = byId('health-alerts');
    clear(list);
    alerts.forEach(function (a) {
      const what = a.key === 'twin' ? 'server twins' : SHARES.filter(function (s) {
        return s.name === a.key;
      })[0].label;
      list.appendChild(el('li', a.event + ' (' + sourceLabel(a.source) + '): ' + what + ' fell from ' +
        pct(a.yesterday) + ' to ' + pct(a.today) + ' over the last 24 hours.', 'alert'));
    });
  }

  function render() {
    const health = state.health;
    if (!health) return;
    const names = Object.keys(health.events).sort();
    state.event = chooseEvent(names);
    fill(byId('health-event'), names, state.event || '');
    renderAlerts(health.alerts || []);
    if (!state.event) {
      const note = byId('health-note');
      note.textContent = 'Collecting data: no event delivered yet.';
      note.hidden = false;
      clear(byId('health-chart'));
      clear(byId('health-table').tBodies[0]);
      byId('health-mirror').textContent = '';
      return;
    }
    const event = health.events[state.event];
    const sources = Object.keys(event.sources);
    if (sources.indexOf(state.source) < 0) state.source = 'all';
    fill(byId('health-source'), sources.length ? sources : ['all'], state.source, sourceLabel);
    renderTable(event);
    renderMirror(event);
    renderChart(health, event);
  }

  document.addEventListener('ttgw:stats', function (e) {
    state.health = e.detail && e.detail.health ? e.detail.health : null;
    render();
  });
  document.addEventListener('ttgw:reset', function () {
    state.health = null;
    state.event = null;
    state.source = 'all';
    ['health-event', 'health-source', 'health-alerts', 'health-chart', 'health-mirror'].forEach(
      function (id) {
        clear(byId(id));
        byId(id).removeAttribute('data-options');
      });
    clear(byId('health-table').tBodies[0]);
    byId('health-note').hidden = true;
  });
  document.addEventListener('DOMContentLoaded', function () {
    byId('health-event').addEventListener('change', function (e) {
      state.event = e.target.value;
      render();
    });
    byId('health-source').addEventListener('change', function (e) {
      state.source = e.target.value;
      render();
    });
  });
})();
