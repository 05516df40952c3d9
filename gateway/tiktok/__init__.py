"""TikTok's side: the Events API rules (the spec), the local emulator, and the /tt/ first-party
proxy of TikTok's pixel.
"""
