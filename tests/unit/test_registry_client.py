"""Parsing what registries send (Link, WWW-Authenticate, errors) and the names they accept."""

from __future__ import annotations

import pytest
import requests

from app.core.errors import InvalidInputError, RegistryError, UnavailableError
from app.registry.client import (
    RegistryEndpoint,
    base_url,
    is_digest,
    is_repository,
    next_page,
    paginate_locally,
    parse_challenge,
    registry_reason,
    translate_transport_error,
    validate_reference,
    validate_repository,
)

DIGEST = "sha256:" + "a" * 64


def test_next_page_reads_last_and_n_of_the_next_link():
    assert next_page('</v2/_catalog?last=b&n=1>; rel="next"') == {"last": "b", "n": 1}


def test_next_page_decodes_a_last_repository_with_slashes():
    link = '</v2/_catalog?last=team%2Fweb&n=100>; rel="next"'
    assert next_page(link) == {"last": "team/web", "n": 100}


def test_next_page_ignores_other_relations_and_absent_headers():
    assert next_page(None) is None
    assert next_page("") is None
    assert next_page('</v2/_catalog?last=b&n=1>; rel="prev"') is None


def test_next_page_without_n_keeps_last():
    assert next_page('</v2/web/tags/list?last=v2>; rel="next"') == {"last": "v2", "n": None}


def test_bearer_challenge_keeps_commas_inside_a_quoted_scope():
    header = ('Bearer realm="https://auth.example.com/token",service="registry.example.com",'
              'scope="repository:team/web:pull,push"')
    assert parse_challenge(header) == ("bearer", {
        "realm": "https://auth.example.com/token", "service": "registry.example.com",
        "scope": "repository:team/web:pull,push"})


def test_basic_challenge_as_distribution_with_htpasswd_sends_it():
    assert parse_challenge('Basic realm="dockyard-test"') == ("basic", {"realm": "dockyard-test"})


def test_challenge_scheme_is_case_insensitive_and_unquoted_values_parse():
    assert parse_challenge("BEARER realm=https://a/token, service=reg") == (
        "bearer", {"realm": "https://a/token", "service": "reg"})


def test_challenge_unescapes_quoted_pairs_and_rejects_empty_headers():
    assert parse_challenge(r'Basic realm="say \"hi\""') == ("basic", {"realm": 'say "hi"'})
    assert parse_challenge(None) is None
    assert parse_challenge("  ") is None


@pytest.mark.parametrize("name", ["web", "team/web", "a/b/c", "a_b/c__d/e-f/g.h", "a--b",
                                  "a" * 255])
def test_repository_names_distribution_accepts(name):
    assert is_repository(name)
    validate_repository(name)


@pytest.mark.parametrize("name", ["", "Team/web", "web/", "/web", "a//b", "-web", "web-",
                                  "we..b", "a___b", "team/web:1", "127.0.0.1:5000/web",
                                  "a" * 256])
def test_repository_names_distribution_refuses_are_422(name):
    assert not is_repository(name)
    with pytest.raises(InvalidInputError) as caught:
        validate_repository(name)
    assert caught.value.status == 422
    assert "repository" in caught.value.extra["errors"]


@pytest.mark.parametrize("reference", ["latest", "v1.2.3", "_x", "A-b_c.d", "a" * 128, DIGEST])
def test_tags_and_digests_are_references(reference):
    validate_reference(reference)


@pytest.mark.parametrize("reference", ["", ".hidden", "-x", "a" * 129, "sha256:abc", "a:b",
                                       "tag with space"])
def test_other_references_are_422(reference):
    with pytest.raises(InvalidInputError):
        validate_reference(reference)


def test_digest_shape():
    assert is_digest(DIGEST)
    assert not is_digest("latest")
    assert not is_digest("sha256:xyz")


@pytest.mark.parametrize(("url", "expected"), [
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("https://reg.example.com/", "https://reg.example.com"),
    ("reg.example.com:5443", "https://reg.example.com:5443"),
])
def test_base_url_defaults_to_https_like_docker(url, expected):
    assert base_url(url) == expected


def _response(status: int, body: bytes, content_type: str = "application/json"
              ) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = body
    response.headers["Content-Type"] = content_type
    return response


def test_registry_reason_quotes_the_distribution_error_code_and_message():
    body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}'
    assert registry_reason(_response(401, body)) == "UNAUTHORIZED: authentication required"


def test_registry_reason_falls_back_to_status_and_text():
    response = _response(502, b"bad gateway", "text/plain")
    response.reason = "Bad Gateway"
    assert registry_reason(response) == "HTTP 502 Bad Gateway: bad gateway"


def test_endpoint_repr_never_shows_the_password():
    endpoint = RegistryEndpoint("r", "http://x", "user", "s3cret-pw")
    assert "s3cret-pw" not in repr(endpoint)


def test_transport_errors_map_to_unavailable_and_tls_failures_to_registry_errors():
    endpoint = RegistryEndpoint("r", "https://127.0.0.1:1")
    refused = translate_transport_error(requests.exceptions.ConnectionError("refused"), endpoint)
    assert isinstance(refused, UnavailableError) and refused.status == 503
    timeout = translate_transport_error(requests.exceptions.ReadTimeout("slow"), endpoint)
    assert isinstance(timeout, UnavailableError)
    tls = translate_transport_error(requests.exceptions.SSLError(
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"), endpoint)
    assert isinstance(tls, RegistryError) and tls.status == 502
    assert "certificate verification failed" in tls.detail


def test_local_pagination_pages_lexically_after_last_like_distribution_3():
    tags = ["v2", "latest", "v1"]
    assert paginate_locally(tags, 2, None) == (["latest", "v1"], {"last": "v1", "n": 2})
    assert paginate_locally(tags, 2, "v1") == (["v2"], None)
    assert paginate_locally(tags, 3, None) == (["latest", "v1", "v2"], None)
    assert paginate_locally(tags, 1, "v2") == ([], None)
