"""TikTok's side: the Events API's rules, the local emulator, and the /tt/ first-party proxy of
TikTok's pixel.

- ``api`` (the endpoint, its answer codes and messages), ``names`` (event names, aliases,
  currencies) and ``validation`` (the strict body validator): what TikTok accepts, used by the
  emulator and by the gateway's ingest and delivery alike.
- ``emulator`` (the app and its CLI entry), ``emulator_state`` (config, scripts, records) and
  ``emulator_control`` (the ``/_emulator/*`` endpoints): a strict local TikTok.
- ``proxy`` (the handler, upstream fetch and script cache) and ``proxy_rules`` (the allow-list,
  header filtering and script rewriting): the ``/tt/`` pixel proxy.
"""
