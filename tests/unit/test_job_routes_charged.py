"""Every job submission route is charged and audited by its job script (one Redis round
trip, ``api.common.charged_by_job``), except those that take an upload first: a request
over its limit must be refused before its body is spooled, so those are charged by the
before-request hook, before the view reads anything."""

from __future__ import annotations

# (method, rule) of the job routes whose view spools an upload before ``start_job``, and of
# the placement route (its submission fans out over several hosts: always charged apart).
CHARGED_BY_HOOK = {
    ("POST", "/api/v1/builds"),
    ("PUT", "/api/v1/hosts/<string:host>/containers/<string:ref>/archive"),
    ("POST", "/api/v1/hosts/<string:host>/images/load"),
    ("POST", "/api/v1/hosts/<string:host>/images/import"),
    ("POST", "/api/v1/hosts/auto/containers"),
}


def _job_routes(flask_app) -> dict[tuple[str, str], bool]:
    """(method, rule) -> marked, for every view documented as answering 202 (a job)."""
    found = {}
    for rule in flask_app.url_map.iter_rules():
        view_class = getattr(flask_app.view_functions[rule.endpoint], "view_class", None)
        if view_class is None:
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            handler = getattr(view_class, method.lower(), None)
            docs = getattr(handler, "_apidoc", {}).get("response", {}).get("responses", {})
            if 202 in docs or "202" in docs:
                found[(method, rule.rule)] = getattr(handler, "charged_by_job", False)
    return found


def test_every_job_route_but_uploads_and_placement_is_charged_by_its_job_script(offline_app):
    routes = _job_routes(offline_app)
    assert len(routes) >= 25, sorted(routes)  # the walk found the job routes at all
    assert set(routes) >= CHARGED_BY_HOOK, CHARGED_BY_HOOK - set(routes)
    unmarked = {route for route, marked in routes.items() if not marked}
    assert unmarked == CHARGED_BY_HOOK
