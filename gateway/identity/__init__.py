"""Who the shopper is: cookies, normalization and hashing of match keys, URL redaction, visitors
and stitching, consent.
"""
