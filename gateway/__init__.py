"""tiktok-gateway: a self-hosted, first-party, server-side tag gateway for TikTok ads."""

from __future__ import annotations

__version__ = "0.1.0"
