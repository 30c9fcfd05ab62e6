"""The stack answers: a viewer reads the local engine's info through the query lane."""


def test_local_host_info_matches_engine(admin, engine):
    response = admin.get("/hosts/local/info")
    assert response.status_code == 200, response.text
    assert response.json()["ID"] == engine.info()["ID"]
