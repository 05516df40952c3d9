from __future__ import annotations

import base64
import hashlib
import hmac
import os
import string
from datetime import UTC, datetime
from http.cookies import SimpleCookie

import pytest
from aiohttp import CookieJar, web
from hypothesis import given
from hypothesis import strategies as st
from pytest_aiohttp import AiohttpClient
from yarl import URL

from gateway.identity.cookies import (
    CLICK_COOKIE,
    COOKIE_HEADER_MAX_CHARS,
    TTP_COOKIE,
    VISITOR_COOKIE,
    CookiePolicy,
    CookieSigner,
    mint_ttp,
    parse_cookie_header,
    read_ttclid,
    read_ttp,
    set_cookie_header,
    strip_pixel_click_suffix,
    valid_visitor_id,
)
from gateway.store.keys import COOKIE_MAX_AGE_S

SECRET = "s" * 40
OTHER_SECRET = "t" * 40
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
B64URL = string.ascii_letters + string.digits + "-_"
TTCLID = "E.C.P.abc-DEF_ghi"

# The five _ttp formats observed in the wild (reference tiktok-events-api.md §6.2), verbatim.
OBSERVED_TTP = [
    "2F7h37YkS1j57AYSKTI7IHhJPYH",
    "2gN13NjfKakLCNrY62vuRMibmvB",
    "bAh736mNZFlgjxX-i_UGr01ZOWU",
    "cJuDPSfVIbj6tMUxxvrPOUj-28o",
    "31uUWHsX2IUTynoQ6OqsJWdhN2R.tt.1",
    "w0twNdkVuWimw_xIZvxkeal5NyI.tt.1",
    "01K0T8BYGJH63785W68YS5NN1R_.tt.1",
    "01M1Q5X644PB9G8YC2DJDFHFNG_.tt.1.1788558088324",
]


def ulid_time_ms(ttp: str) -> int:
    value = 0
    for char in ttp[:10]:
        value = value * 32 + CROCKFORD.index(char)
    return value


@pytest.fixture
def signer() -> CookieSigner:
    return CookieSigner(SECRET)


# --- visitor id -------------------------------------------------------------------------------


def test_new_visitor_ids_are_22_base64url_chars_and_unique(signer: CookieSigner) -> None:
    ids = {signer.new_visitor_id() for _ in range(200)}
    assert len(ids) == 200
    for visitor_id in ids:
        assert len(visitor_id) == 22
        assert set(visitor_id) <= set(B64URL)
        assert valid_visitor_id(visitor_id)


def test_visitor_cookie_round_trips(signer: CookieSigner) -> None:
    visitor_id = signer.new_visitor_id()
    value = signer.visitor_cookie(visitor_id)
    head, sig = value.split(".")
    assert head == visitor_id
    assert len(sig) == 22
    assert signer.read_visitor(value) == visitor_id
    # Another signer with the same secret (another process) agrees.
    assert CookieSigner(SECRET).read_visitor(value) == visitor_id


def test_visitor_cookie_is_deterministic_and_bound_to_the_id(signer: CookieSigner) -> None:
    a, b = signer.new_visitor_id(), signer.new_visitor_id()
    assert signer.visitor_cookie(a) == signer.visitor_cookie(a)
    sig_a = signer.visitor_cookie(a).split(".")[1]
    assert signer.read_visitor(f"{b}.{sig_a}") is None


def test_visitor_cookie_refuses_a_malformed_id(signer: CookieSigner) -> None:
    for bad in ["", "short", "a" * 23, "a" * 21 + ".", "a" * 21 + "é"]:
        with pytest.raises(ValueError, match="visitor id"):
            signer.visitor_cookie(bad)


def test_read_visitor_rejects_everything_else(signer: CookieSigner) -> None:
    visitor_id = signer.new_visitor_id()
    good = signer.visitor_cookie(visitor_id)
    head, sig = good.split(".")
    flipped = sig[:-1] + ("A" if sig[-1] != "A" else "B")
    bad_values = [
        None,
        "",
        ".",
        head,
        f"{head}.",
        f".{sig}",
        f"{head}.{flipped}",
        good[:-1],
        good + "A",
        good + ".x",
        f"x.{good}",
        f"{head}.{sig}.{sig}",
        f"{head}..{sig}",
        f" {good}",
        f"{good} ",
        f'"{good}"',
        f"{head[:-1]}é.{sig}",
        f"{head}.{sig[:-1]}é",
        "\x00" * 45,
        CookieSigner(OTHER_SECRET).visitor_cookie(visitor_id),
    ]
    for value in bad_values:
        assert signer.read_visitor(value) is None, value


def test_signing_key_is_derived_not_the_raw_secret(signer: CookieSigner) -> None:
    # Signatures are not a plain HMAC(secret, message), so the secret can serve other purposes.
    visitor_id = signer.new_visitor_id()
    raw = hmac.new(SECRET.encode(), b"v1|visitor|" + visitor_id.encode(), hashlib.sha256)
    naive = base64.urlsafe_b64encode(raw.digest()[:16]).rstrip(b"=").decode()
    assert signer.visitor_cookie(visitor_id) != f"{visitor_id}.{naive}"


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="secret_key"):
        CookieSigner("")


def test_valid_visitor_id() -> None:
    assert valid_visitor_id("AAAAAAAAAAAAAAAAAAAAAA")
    assert valid_visitor_id("abc-DEF_ghi0123456789x")
    for bad in ["", "A" * 21, "A" * 23, "A" * 21 + "=", "A" * 21 + "+", "A" * 21 + "\n", "Ａ" * 22]:
        assert not valid_visitor_id(bad), bad


# --- click --------------------------------------------------------------------------------------


def test_click_cookie_round_trips_with_a_dotted_ttclid(signer: CookieSigner) -> None:
    value = signer.click_cookie(TTCLID, 1_781_430_082_123)
    assert value.startswith(f"{TTCLID}.1781430082123.")
    assert signer.read_click(value) == (TTCLID, 1_781_430_082_123)


def test_click_cookie_round_trips_a_real_length_ttclid(signer: CookieSigner) -> None:
    ttclid = "E.C.P." + ("Cq8BKk8Kd-_0" * 27)[:319]
    assert len(ttclid) == 325
    assert signer.read_click(signer.click_cookie(ttclid, 0)) == (ttclid, 0)


def test_click_cookie_refuses_bad_input(signer: CookieSigner) -> None:
    with pytest.raises(ValueError, match="ttclid"):
        signer.click_cookie("a;b", 1)
    with pytest.raises(ValueError, match="ttclid"):
        signer.click_cookie("", 1)
    with pytest.raises(ValueError, match="click_ms"):
        signer.click_cookie(TTCLID, -1)
    with pytest.raises(ValueError, match="click_ms"):
        signer.click_cookie(TTCLID, True)


def test_read_click_rejects_tampering(signer: CookieSigner) -> None:
    good = signer.click_cookie(TTCLID, 1_781_430_082_123)
    ttclid_part, ms, sig = good.rsplit(".", 2)
    bad_values = [
        None,
        "",
        "..",
        TTCLID,
        f"{TTCLID}.{ms}",
        f"{TTCLID}.{ms}.",
        f"{TTCLID}.{int(ms) + 1}.{sig}",  # moved the click time
        f"E.C.P.abc-DEF_ghj.{ms}.{sig}",  # another click id
        f"{TTCLID}.0{ms}.{sig}",  # same number, another spelling
        f"{TTCLID}.-{ms}.{sig}",
        f"{TTCLID}.{ms}.{sig[:-1]}",
        f"{TTCLID}.{ms}.{sig}x",
        f"{TTCLID};.{ms}.{sig}",
        f"{TTCLID}é.{ms}.{sig}",
        good + ".x",
        CookieSigner(OTHER_SECRET).click_cookie(TTCLID, int(ms)),
        # a visitor cookie's signature does not verify as a click, and vice versa
        signer.visitor_cookie("AAAAAAAAAAAAAAAAAAAAAA"),
    ]
    assert ttclid_part == TTCLID
    for value in bad_values:
        assert signer.read_click(value) is None, value


def test_read_ttclid() -> None:
    long_id = "E.C.P." + "A" * 1018
    assert read_ttclid(TTCLID) == TTCLID
    assert read_ttclid("E.C.P.Cq8BKk8Kd==") == "E.C.P.Cq8BKk8Kd=="
    assert read_ttclid("plainid1234567890") == "plainid1234567890"  # the prefix is not required
    assert read_ttclid(long_id) == long_id
    for bad in [None, "", ".", "--", "a" * 1025, "a b", "a;b", "a,b", "a+b", "a/b", "é", "a\n"]:
        assert read_ttclid(bad) is None, bad
    # what pages and templates put where a click id was meant to be is no click (issue 13)
    for junk in ["undefined", "null", "None", "NULL", "1", "0", "true", "__CLICKID__",
                 "{{ttclid}}", "${ttclid}", "[ttclid]", "%7Bttclid%7D", "plainid123"]:  # fmt: skip
        assert read_ttclid(junk) is None, junk


def test_strip_pixel_click_suffix() -> None:
    assert strip_pixel_click_suffix("E.C.P.abc.1788558088324") == "E.C.P.abc"
    assert strip_pixel_click_suffix("E.C.P.abc") == "E.C.P.abc"
    assert strip_pixel_click_suffix("E.C.P.abc.178855808832") == "E.C.P.abc.178855808832"
    assert strip_pixel_click_suffix("E.C.P.abc.17885580883245") == "E.C.P.abc.17885580883245"
    assert strip_pixel_click_suffix("E.C.P.1234567890123456.1788558088324") == (
        "E.C.P.1234567890123456"
    )
    assert strip_pixel_click_suffix(".1788558088324") == ".1788558088324"  # nothing would be left
    assert strip_pixel_click_suffix("a.1788558088324.1788558088324") == "a.1788558088324"


# --- _ttp ---------------------------------------------------------------------------------------


def test_mint_ttp_is_a_ulid_in_the_pixel_format() -> None:
    now_ms = 1_753_180_000_123
    ttp = mint_ttp(now_ms)
    assert ttp.endswith("_.tt.1")
    ulid = ttp.removesuffix("_.tt.1")
    assert len(ulid) == 26
    assert set(ulid) <= set(CROCKFORD)
    assert ulid_time_ms(ttp) == now_ms
    assert read_ttp(ttp) == ttp


def test_mint_ttp_values_differ_and_sort_by_time() -> None:
    base = 1_753_180_000_000
    assert mint_ttp(base) != mint_ttp(base)
    minted = [mint_ttp(base + offset) for offset in (0, 1, 999, 86_400_000, 10**10)]
    assert sorted(minted) == minted
    assert ulid_time_ms(mint_ttp(0)) == 0
    assert ulid_time_ms(mint_ttp(2**48 - 1)) == 2**48 - 1


def test_mint_ttp_refuses_times_outside_ulid_range() -> None:
    for bad in (-1, 2**48):
        with pytest.raises(ValueError, match="now_ms"):
            mint_ttp(bad)


def test_observed_ulid_ttp_decodes_to_its_documented_date() -> None:
    # The reference dates "01K0T8BYGJ…" to 2025-07-22: our decoder agrees with the pixel's encoder.
    when = datetime.fromtimestamp(ulid_time_ms("01K0T8BYGJH63785W68YS5NN1R_.tt.1") / 1000, UTC)
    assert when.date().isoformat() == "2025-07-22"


@pytest.mark.parametrize("value", OBSERVED_TTP)
def test_read_ttp_accepts_every_observed_format(value: str) -> None:
    assert read_ttp(value) == value


def test_read_ttp_rejects_unsafe_values() -> None:
    bad_values = [
        None,
        "",
        "abc;def",
        "abc def",
        '"abc"',
        "abc,def",
        "abc=def",
        "abc\\def",
        "abc\r\nSet-Cookie: x=1",
        "a" * 129,
        "abcé",
    ]
    for value in bad_values:
        assert read_ttp(value) is None, value
    assert read_ttp("a" * 128) == "a" * 128


# --- Set-Cookie ---------------------------------------------------------------------------------


def test_set_cookie_header_with_domain_secure_http_only() -> None:
    policy = CookiePolicy(domain="shop.example", secure=True)
    assert set_cookie_header(VISITOR_COOKIE, "abc.def", policy, http_only=True) == (
        "_ttgw=abc.def; Max-Age=34473600; Path=/; Domain=shop.example; SameSite=Lax; Secure; "
        "HttpOnly"
    )


def test_set_cookie_header_host_only_plain_http_not_http_only() -> None:
    policy = CookiePolicy(domain=None, secure=False)
    assert set_cookie_header(
        TTP_COOKIE, "01K0T8BYGJH63785W68YS5NN1R_.tt.1", policy, http_only=False
    ) == ("_ttp=01K0T8BYGJH63785W68YS5NN1R_.tt.1; Max-Age=34473600; Path=/; SameSite=Lax")


def test_set_cookie_header_custom_max_age() -> None:
    policy = CookiePolicy(domain=None, secure=True, max_age_s=0)
    assert set_cookie_header(CLICK_COOKIE, "", policy, http_only=True) == (
        "_ttgw_clk=; Max-Age=0; Path=/; SameSite=Lax; Secure; HttpOnly"
    )


def test_default_max_age_is_under_chromes_400_day_cap() -> None:
    assert CookiePolicy(domain=None, secure=True).max_age_s == COOKIE_MAX_AGE_S
    assert 390 * 86400 < COOKIE_MAX_AGE_S < 400 * 86400


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("_ttgw", "x\r\nSet-Cookie: admin=1"),
        ("_ttgw", "x; Domain=evil.example"),
        ("_ttgw", "x, y=1"),
        ("_ttgw", "a b"),
        ("_ttgw", '"quoted"'),
        ("_ttgw", "back\\slash"),
        ("_ttgw", "tab\there"),
        ("_ttgw", "nul\x00"),
        ("_ttgw", "del\x7f"),
        ("_ttgw", "é"),
        ("", "x"),
        ("a b", "x"),
        ("a;b", "x"),
        ("a=b", "x"),
        ("a\r\nb", "x"),
        ("a,b", "x"),
        ("é", "x"),
    ],
)
def test_set_cookie_header_refuses_injection(name: str, value: str) -> None:
    with pytest.raises(ValueError, match="cookie"):
        set_cookie_header(name, value, CookiePolicy(domain=None, secure=True), http_only=True)


def test_set_cookie_header_refuses_a_domain_that_would_inject() -> None:
    for domain in ["", "shop.example; Secure=0", "shop.example\r\nX: 1", "a b"]:
        with pytest.raises(ValueError, match="domain"):
            set_cookie_header(
                "_ttgw", "x", CookiePolicy(domain=domain, secure=True), http_only=True
            )


# --- Cookie header parsing ----------------------------------------------------------------------


def test_parse_a_real_browser_header() -> None:
    header = (
        "_ga=GA1.1.1580929744.1753180000; _fbp=fb.1.1753180000000.123456789; "
        "_tt_enable_cookie=1; _ttp=01K0T8BYGJH63785W68YS5NN1R_.tt.1; "
        "ttcsid=1782135322245::bAh736mNZFlgjxX-i_UG.1.1782135322245.0; "
        "ttclid=E.C.P.abc-DEF_ghi.1788558088324; cart=%7B%22items%22%3A2%7D; "
        "_ttgw=AAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBB; session=eyJhIjoxfQ=="
    )
    cookies = parse_cookie_header(header)
    assert cookies == {
        "_ga": "GA1.1.1580929744.1753180000",
        "_fbp": "fb.1.1753180000000.123456789",
        "_tt_enable_cookie": "1",
        "_ttp": "01K0T8BYGJH63785W68YS5NN1R_.tt.1",
        "ttcsid": "1782135322245::bAh736mNZFlgjxX-i_UG.1.1782135322245.0",
        "ttclid": "E.C.P.abc-DEF_ghi.1788558088324",
        "cart": "%7B%22items%22%3A2%7D",
        "_ttgw": "AAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBB",
        "session": "eyJhIjoxfQ==",
    }


def test_parse_keeps_good_pairs_around_malformed_ones() -> None:
    header = (
        'novalue; =orphan; a b=c; ok=1;;  ; bad\x01name=2; ctl=x\x01y; [x]=3; q="quoted"; last=z'
    )
    assert parse_cookie_header(header) == {"ok": "1", "q": "quoted", "last": "z"}


def test_parse_strips_whitespace_and_one_pair_of_quotes() -> None:
    header = ' a = 1 ;\tb="2";c=""x""; d="; e=" spaced "; f="'
    assert parse_cookie_header(header) == {
        "a": "1",
        "b": "2",
        "c": '"x"',
        "d": '"',
        "e": " spaced ",
        "f": '"',
    }


def test_parse_first_occurrence_wins() -> None:
    assert parse_cookie_header("_ttp=first; _ttp=second; x=1; x=2") == {"_ttp": "first", "x": "1"}
    # A malformed first occurrence does not shadow a good later one.
    assert parse_cookie_header("x=a\x00b; x=good") == {"x": "good"}


def test_parse_empty_and_none() -> None:
    assert parse_cookie_header(None) == {}
    assert parse_cookie_header("") == {}
    assert parse_cookie_header(";;;") == {}
    assert parse_cookie_header("empty=") == {"empty": ""}


def test_parse_caps_huge_input() -> None:
    filler = "x" * COOKIE_HEADER_MAX_CHARS
    assert parse_cookie_header(f"a=1; big={filler}; late=2") == {"a": "1"}
    # A pair cut by the cap is dropped, not kept truncated.
    header = "a=1; " + "p=" + "y" * (COOKIE_HEADER_MAX_CHARS - 10) + "; tail=" + "z" * 100
    assert parse_cookie_header(header) == {"a": "1", "p": "y" * (COOKIE_HEADER_MAX_CHARS - 10)}
    assert parse_cookie_header("n=" + filler) == {}
    many = "; ".join(f"c{i}=v{i}" for i in range(20_000))
    parsed = parse_cookie_header(many)
    assert parsed["c0"] == "v0"
    assert 5_000 < len(parsed) < 20_000


# --- properties ---------------------------------------------------------------------------------


@given(st.text())
def test_readers_never_raise(value: str) -> None:
    signer = CookieSigner(SECRET)
    assert signer.read_visitor(value) is None or valid_visitor_id(value.split(".")[0])
    signer.read_click(value)
    assert read_ttp(value) in (None, value)
    assert read_ttclid(value) in (None, value)
    strip_pixel_click_suffix(value)
    parsed = parse_cookie_header(value)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.items())


@given(st.text(alphabet=st.characters(codec="ascii")).map(lambda s: s.replace("\n", "")))
def test_parse_never_raises_on_header_like_text(value: str) -> None:
    for name, cookie_value in parse_cookie_header(value).items():
        assert name and ";" not in name and ";" not in cookie_value


@given(st.text(alphabet=B64URL + ".", max_size=60))
def test_read_visitor_accepts_only_its_own_signatures(value: str) -> None:
    signer = CookieSigner(SECRET)
    visitor_id = signer.read_visitor(value)
    if visitor_id is not None:
        assert value == signer.visitor_cookie(visitor_id)


@given(st.binary(min_size=16, max_size=16), st.integers(0, 44), st.sampled_from(B64URL + "."))
def test_any_single_character_change_breaks_the_visitor_signature(
    raw: bytes, position: int, replacement: str
) -> None:
    signer = CookieSigner(SECRET)
    visitor_id = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    good = signer.visitor_cookie(visitor_id)
    assert signer.read_visitor(good) == visitor_id
    assert CookieSigner(OTHER_SECRET).read_visitor(good) is None
    changed = good[:position] + replacement + good[position + 1 :]
    if changed != good:
        assert signer.read_visitor(changed) is None


@given(
    # real click ids: TikTok's prefix and a base64url blob (a placeholder is no click id)
    st.text(alphabet=B64URL + ".=", min_size=1, max_size=200)
    .map(lambda s: "E.C.P." + s)
    .filter(lambda s: read_ttclid(s)),
    st.integers(0, 10**16 - 1),
)
def test_click_round_trips(ttclid: str, click_ms: int) -> None:
    signer = CookieSigner(SECRET)
    assert signer.read_click(signer.click_cookie(ttclid, click_ms)) == (ttclid, click_ms)


# --- end to end through real HTTP ---------------------------------------------------------------


def cookie_app() -> web.Application:
    """A stand-in for the gateway's cookie handling: read, mint when missing, refresh all three."""
    signer = CookieSigner(SECRET)

    async def handler(request: web.Request) -> web.Response:
        received = parse_cookie_header(request.headers.get("Cookie"))
        visitor_id = signer.read_visitor(received.get(VISITOR_COOKIE)) or signer.new_visitor_id()
        ttp = read_ttp(received.get(TTP_COOKIE)) or mint_ttp(1_753_180_000_000)
        click = signer.read_click(received.get(CLICK_COOKIE)) or (TTCLID, 1_753_180_000_000)
        domain = request.query.get("domain")
        policy = CookiePolicy(domain=domain, secure=domain is not None)
        response = web.json_response(
            {"received": received, "visitor_id": visitor_id, "ttp": ttp, "click": list(click)}
        )
        for name, value, http_only in [
            (VISITOR_COOKIE, signer.visitor_cookie(visitor_id), True),
            (TTP_COOKIE, ttp, False),
            (CLICK_COOKIE, signer.click_cookie(*click), True),
        ]:
            response.headers.add(
                "Set-Cookie", set_cookie_header(name, value, policy, http_only=http_only)
            )
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    return app


async def test_cookies_survive_a_real_client_cookie_jar(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(cookie_app())

    first = await client.get("/", headers={"Cookie": "_ttp=2F7h37YkS1j57AYSKTI7IHhJPYH"})
    assert first.status == 200
    body = await first.json()
    assert body["received"] == {"_ttp": "2F7h37YkS1j57AYSKTI7IHhJPYH"}
    assert body["ttp"] == "2F7h37YkS1j57AYSKTI7IHhJPYH"  # the pixel's value is kept, not replaced
    assert len(first.headers.getall("Set-Cookie")) == 3
    stored = {c.key: c for c in client.session.cookie_jar}
    assert set(stored) == {VISITOR_COOKIE, TTP_COOKIE, CLICK_COOKIE}
    assert stored[VISITOR_COOKIE]["httponly"] is True
    assert not stored[TTP_COOKIE]["httponly"]
    assert stored[CLICK_COOKIE]["httponly"] is True
    assert stored[VISITOR_COOKIE]["samesite"] == "Lax"
    assert stored[VISITOR_COOKIE]["path"] == "/"
    assert stored[VISITOR_COOKIE]["max-age"] == str(COOKIE_MAX_AGE_S)

    # The jar sends them back; the server verifies them and keeps the same identity.
    second = await client.get("/")
    again = await second.json()
    assert set(again["received"]) == {VISITOR_COOKIE, TTP_COOKIE, CLICK_COOKIE}
    assert again["visitor_id"] == body["visitor_id"]
    assert again["ttp"] == "2F7h37YkS1j57AYSKTI7IHhJPYH"
    assert again["click"] == [TTCLID, 1_753_180_000_000]


async def test_domain_and_secure_cookies_parse_in_a_real_client(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(cookie_app())
    response = await client.get("/", params={"domain": "shop.example"})
    assert response.status == 200
    # Parsed by aiohttp's own client parser from the raw Set-Cookie headers.
    parsed = response.cookies
    assert set(parsed) == {VISITOR_COOKIE, TTP_COOKIE, CLICK_COOKIE}
    for morsel in parsed.values():
        assert morsel["domain"] == "shop.example"
        assert morsel["secure"] is True
        assert morsel["samesite"] == "Lax"
    # The stdlib parser agrees the headers are well formed.
    for header in response.headers.getall("Set-Cookie"):
        assert len(SimpleCookie(header)) == 1

    # Set by t.shop.example, sent to every host of the registrable domain over https only.
    jar = CookieJar()
    jar.update_cookies(parsed, URL("https://t.shop.example/landing"))
    assert set(jar.filter_cookies(URL("https://www.shop.example/cart"))) == {
        VISITOR_COOKIE,
        TTP_COOKIE,
        CLICK_COOKIE,
    }
    assert set(jar.filter_cookies(URL("http://www.shop.example/cart"))) == set()
    assert set(jar.filter_cookies(URL("https://evilshop.example/"))) == set()


def test_pooled_random_bytes_are_never_handed_out_twice_nor_shared_with_a_forked_child() -> None:
    from gateway.identity.cookies import random_bytes

    seen = {random_bytes(10) for _ in range(2000)}  # several 4 KiB pools
    assert len(seen) == 2000
    random_bytes(1)  # the parent's pool holds bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next bytes, to the parent
        os.write(write, random_bytes(16))
        os._exit(0)
    os.close(write)
    child = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 16
    assert child != random_bytes(16)  # the parent's next bytes are not the child's
