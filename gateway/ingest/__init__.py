"""From the request to the queue: the routes (/e, /v1/track, Segment's /v1/batch, /landing,
/c.js), the envelope and its name table, a Segment message read into the envelope, the browser
request (cookies read, forwarded, CORS), the event built for TikTok and its enqueue.
"""
