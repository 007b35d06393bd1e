from export.repository import list_models, list_versions, load_version


def test_model_repository_fixture_holds_both_models_at_version_1(model_repository):
    assert list_models(model_repository) == ["digits-ae", "digits-vae"]
    assert list_versions(model_repository, "digits-vae") == [1]
    assert load_version(model_repository, "digits-ae").manifest.kind == "ae"
