"""From the queue to TikTok: the worker and its lanes, the outbox (reading and settling the
stream), the Events API client, the rate limiter, receipts, replay and the sandbox.
"""
