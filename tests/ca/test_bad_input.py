"""Bad input to the internal API gets a 4xx with a JSON error code, never a 5xx
(issue 10 item 11, CA part): nested JSON, non-finite or out-of-range numbers in the query,
values of the wrong type, on every route, over real HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import CaHarness

NESTED = "[" * 10_000 + "]" * 10_000
BODY_ROUTES = ("/v1/acquire", "/v1/renew", "/v1/certificates", "/v1/revoke",
               "/v1/users/100001/acquisition-password")
# The fields each route reads (`actor`, optional everywhere, falls back to "api").
ROUTE_FIELDS = {"/v1/acquire": ("user_id", "acquisition_password"),
                "/v1/renew": ("serial", "password"),
                "/v1/certificates": ("user_id", "acquisition_password", "csr"),
                "/v1/revoke": ("serial", "reason")}
# Values of the wrong type or shape for any field (lone surrogates cannot be UTF-8 encoded).
WRONG_VALUES: tuple[Any, ...] = (None, 1, -1, 1.5, True, [], {}, ["x"], {"a": 1}, "",
                                 "\ud800", "\x00", "x" * 70_000, 10**300)
QUERIES = ("wait=nan", "wait=NaN", "wait=inf", "wait=-inf", "wait=-1", "wait=1e999",
           "wait=1e308", "wait=31", "wait=", "wait=0x10", "wait=1_0", "wait=%00",
           "after=-1", "after=9223372036854775808", "after=99999999999999999999999",
           "after=" + "9" * 5000, "after=1e3", "after=1.0", "after=+5", "after= 5",
           "after=%D9%A3", "after=5_0", "after=", "after=latest&wait=nan",
           "after=0&after=1", "wait=1&wait=nan")


def _assert_json_4xx(status: int, body: Any) -> None:
    assert 400 <= status < 500, (status, body)
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body


class TestInternalApiBadInput:
    """Every internal route answers malformed input with a 4xx and a JSON error code."""

    @pytest.mark.parametrize("path", BODY_ROUTES)
    def test_nested_json(self, ca: CaHarness, path: str) -> None:
        """JSON nested 10,000 deep (Python's parser recurses) is 400 bad_json."""
        status, body = ca.api("POST", path, data=NESTED.encode(),
                              headers={"Content-Type": "application/json"})
        assert (status, body["error"]) == (400, "bad_json")

    @pytest.mark.parametrize("path", BODY_ROUTES)
    @pytest.mark.parametrize("payload", ['[]', '"x"', '1', 'null', 'true', '1e999', '-0',
                                         '{"a": NaN}', '{"a": Infinity}', '{"a": 1e999}',
                                         '{"a": "\\ud800"}', '{', '\xff',
                                         '{"user_id": "1", "user_id": 2}'])
    def test_bodies_that_are_not_an_object(self, ca: CaHarness, path: str,
                                           payload: str) -> None:
        """Non-object, non-JSON and non-UTF-8 bodies, NaN, numbers beyond a double, lone
        surrogates and repeated names are refused with a JSON 4xx."""
        status, body = ca.api("POST", path, data=payload.encode("latin-1"),
                              headers={"Content-Type": "application/json"})
        _assert_json_4xx(status, body)

    @pytest.mark.parametrize(("path", "field"),
                             [(p, f) for p, fields in ROUTE_FIELDS.items() for f in fields])
    def test_fields_of_the_wrong_type(self, ca: CaHarness, path: str, field: str) -> None:
        """Each field a route reads, set to each wrong value (the others valid), gets a JSON
        4xx."""
        valid = {"user_id": "100001", "acquisition_password": "a" * 16,
                 "serial": "ab" * 10, "password": "Passw0rdX", "csr": "x",
                 "reason": "keyCompromise", "actor": "helpdesk"}
        for value in WRONG_VALUES:
            status, body = ca.api("POST", path, json={**valid, field: value})
            _assert_json_4xx(status, body)

    @pytest.mark.parametrize("query", QUERIES)
    def test_revocation_feed_query(self, ca: CaHarness, query: str) -> None:
        """`wait` must be a number from 0 to 30 and `after` an integer from 0 to 2^63-1 (or
        `latest`): anything else is 400 bad_query, at once."""
        status, body = ca.api("GET", f"/v1/revocations?{query}")
        assert (status, body["error"]) == (400, "bad_query"), (query, body)

    @pytest.mark.parametrize("query", ["after=0&wait=0", "after=9223372036854775807&wait=0",
                                       "after=latest", "wait=0.01", "wait=30&after=latest",
                                       ""])
    def test_revocation_feed_valid_queries(self, ca: CaHarness, query: str) -> None:
        """The edges of the accepted ranges still answer 200."""
        status, body = ca.api("GET", f"/v1/revocations?{query}")
        assert status == 200, body

    @pytest.mark.parametrize("path", ["/v1/certificates/" + "a" * 5000,
                                      "/v1/certificates/%00", "/v1/certificates/-1",
                                      "/v1/certificates/%ED%A0%80",
                                      "/v1/users/%ED%A0%80/certificates",
                                      "/v1/users/" + "9" * 5000 + "/certificates",
                                      "/v1/users/%00/certificates",
                                      "/v1/certificates/ab?x=%ff%fe"])
    def test_path_parameters(self, ca: CaHarness, path: str) -> None:
        """Odd serials and user IDs in the path get a JSON 4xx."""
        status, body = ca.api("GET", path)
        _assert_json_4xx(status, body)
