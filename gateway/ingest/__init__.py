"""From the request to the queue: the routes (/e, /v1/track, /landing, /c.js), the envelope and its
name table, the browser request (cookies read, forwarded, CORS), the event built for TikTok and
its enqueue.
"""
