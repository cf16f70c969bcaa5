from __future__ import annotations

import re
from pathlib import Path

import pytest

from common.config import Config, ConfigError
from common.variables import DEFAULT_ALLOWED_TYPES, VARIABLES

README = Path(__file__).resolve().parents[2] / "README.md"


def test_defaults() -> None:
    c = Config.from_env({})
    assert c.port == 8080
    assert c.max_upload_bytes == 100 * 1024 * 1024
    assert c.allowed_types == frozenset(DEFAULT_ALLOWED_TYPES)
    assert c.data_dir == Path("./var").absolute()
    assert c.cas_root == c.data_dir / "cas"
    assert c.database_url is None
    assert c.jwt_issuer is None


def test_values_are_parsed() -> None:
    c = Config.from_env(
        {
            "MEDIA_PORT": "9000",
            "MEDIA_MAX_UPLOAD_BYTES": "1024",
            "MEDIA_ALLOWED_TYPES": " image/png , Image/JPEG,",
            "MEDIA_JWT_AUDIENCE": "media",
        }
    )
    assert (c.port, c.max_upload_bytes, c.jwt_audience) == (9000, 1024, "media")
    assert c.allowed_types == {"image/png", "image/jpeg"}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MEDIA_PORT", "eighty"),
        ("MEDIA_PORT", "0"),
        ("MEDIA_MAX_UPLOAD_BYTES", "-1"),
        ("MEDIA_ALLOWED_TYPES", "png"),
        ("MEDIA_ALLOWED_TYPES", ","),
        ("MEDIA_DB_TIMEOUT_SECONDS", "0"),
        ("MEDIA_DB_TIMEOUT_SECONDS", "soon"),
        ("MEDIA_AUTH_MODE", "trusting"),
        ("MEDIA_JWT_ALGORITHMS", "none"),
        ("MEDIA_JWT_ALGORITHMS", "RS256,HS512"),
        ("MEDIA_JWKS_URL", "file:///etc/keys"),
        ("MEDIA_STORAGE", "nfs"),
        ("MEDIA_S3_BUCKET", "My_Bucket"),
        ("MEDIA_S3_BUCKET", "ab"),
        ("MEDIA_S3_PREFIX", "media files/"),
        ("MEDIA_S3_PART_BYTES", str(5 * 1024 * 1024)),  # S3's own minimum, under ours
        ("MEDIA_S3_DOWNLOAD", "proxy"),
        ("MEDIA_S3_ENDPOINT_URL", "minio:9000"),
    ],
)
def test_malformed_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Config.from_env({name: value})


def test_required_values_are_demanded_by_name() -> None:
    with pytest.raises(ConfigError, match="MEDIA_DATABASE_URL"):
        Config.from_env({}).require_database_url()
    with pytest.raises(ConfigError, match="MEDIA_JWT_SECRET, MEDIA_JWKS_URL or MEDIA_JWT_ISSUER"):
        Config.from_env({}).check_auth()
    with pytest.raises(ConfigError, match="MEDIA_INTROSPECTION_URL"):
        Config.from_env({"MEDIA_AUTH_MODE": "introspect"}).check_auth()
    with pytest.raises(ConfigError, match="MEDIA_INTROSPECTION_CLIENT_ID"):
        Config.from_env(
            {"MEDIA_AUTH_MODE": "both", "MEDIA_JWKS_URL": "https://id/jwks", "MEDIA_JWT_ISSUER": "https://id"}
        ).check_auth()
    Config.from_env({"MEDIA_JWKS_URL": "https://id.example/jwks"}).check_auth()  # enough offline
    with pytest.raises(ConfigError, match="MEDIA_STORAGE=s3 needs MEDIA_S3_BUCKET"):
        Config.from_env({"MEDIA_STORAGE": "s3"}).require_s3_bucket()


def test_s3_settings_are_read_and_normalised() -> None:
    c = Config.from_env(
        {
            "MEDIA_STORAGE": "s3",
            "MEDIA_S3_BUCKET": "recipes-media.eu",
            "MEDIA_S3_PREFIX": "/media",
            "MEDIA_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
            "MEDIA_S3_PART_BYTES": str(16 * 1024 * 1024),
        }
    )
    assert (c.storage, c.require_s3_bucket(), c.s3_prefix) == ("s3", "recipes-media.eu", "media/")
    assert (c.s3_endpoint_url, c.s3_part_bytes, c.s3_download) == (
        "http://127.0.0.1:9000",
        16 * 1024 * 1024,
        "stream",
    )


def test_readme_documents_every_variable_with_its_default() -> None:
    text = README.read_text(encoding="utf-8")
    for var in VARIABLES:
        row = re.search(rf"^\| `{var.name}` \|([^|]*)\|", text, re.MULTILINE)
        assert row, f"README has no table row for {var.name}"
        documented = row.group(1).strip().strip("`")
        expected = var.default if var.default is not None else "(unset)"
        assert documented == expected, f"README says {documented!r} for {var.name}, code says {expected!r}"


def test_variables_can_come_from_a_directory_of_secret_files(tmp_path: Path) -> None:
    (tmp_path / "MEDIA_DATABASE_URL").write_text("postgresql://media@db/media\n")
    (tmp_path / "MEDIA_PRESIGN_SECRET").write_text("from-the-file")
    (tmp_path / "..data").mkdir()  # what a projected volume also holds: ignored
    (tmp_path / "AWS_SECRET_ACCESS_KEY").write_text("not ours")
    config = Config.from_env(
        {"MEDIA_SECRETS_DIR": str(tmp_path), "MEDIA_PRESIGN_SECRET": "from-the-environment"}
    )
    assert config.database_url == "postgresql://media@db/media"
    assert config.presign_secret == "from-the-environment"  # the environment wins
    with pytest.raises(ConfigError, match="MEDIA_SECRETS_DIR"):
        Config.from_env({"MEDIA_SECRETS_DIR": str(tmp_path / "absent")})
