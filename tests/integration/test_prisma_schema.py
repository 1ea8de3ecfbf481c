"""prisma/schema.prisma declares exactly the tables our migrations create.

Prisma's WASM schema engine (npm ``@prisma/prisma-schema-wasm``, pinned in package-lock.json)
validates the file and gives its DMMF, which is compared field by field with
``information_schema`` of a freshly migrated database. No Prisma CLI, no native engine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from litellm_jobs_plugin.store.postgres import PostgresStore
from tests.conftest import query

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "prisma" / "schema.prisma"
SCALARS = {
    "String": "text",
    "Int": "integer",
    "BigInt": "bigint",
    "Boolean": "boolean",
    "DateTime": "timestamp with time zone",
    "Json": "jsonb",
    "Decimal": "numeric",
}


def dmmf(schema_text: str) -> dict[str, Any]:
    if shutil.which("node") is None or not (ROOT / "node_modules" / "@prisma" / "prisma-schema-wasm").exists():
        pytest.fail("node and `npm ci` are needed for the Prisma schema check (scripts/install-test-deps does both)")
    out = subprocess.run(
        ["node", str(ROOT / "tests" / "support" / "prisma_dmmf.js")],
        input=schema_text,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def mismatches(datamodel: dict[str, Any], database_url: str, schema: str = "litellm_jobs") -> list[str]:
    """Every difference between the DMMF and the live tables, as readable lines."""
    problems: list[str] = []
    columns = query(
        database_url,
        """
        SELECT table_name, column_name, data_type, is_nullable, numeric_precision, numeric_scale, udt_name
        FROM information_schema.columns WHERE table_schema = %s""",
        schema,
    )
    live: dict[str, dict[str, dict[str, Any]]] = {}
    for c in columns:
        live.setdefault(c["table_name"], {})[c["column_name"]] = c
    pkeys: dict[str, list[str]] = {}
    for r in query(
        database_url,
        """
            SELECT tc.table_name, kcu.column_name FROM information_schema.table_constraints tc
            JOIN information_schema.key_column_usage kcu
              ON kcu.constraint_name = tc.constraint_name AND kcu.table_schema = tc.table_schema
            WHERE tc.table_schema = %s AND tc.constraint_type = 'PRIMARY KEY'
            ORDER BY kcu.ordinal_position""",
        schema,
    ):
        pkeys.setdefault(r["table_name"], []).append(r["column_name"])

    declared_tables = set()
    for model in datamodel["models"]:
        table = model.get("dbName") or model["name"]
        declared_tables.add(table)
        if model.get("schema") != schema:
            problems.append(f"model {model['name']}: @@schema is {model.get('schema')!r}, not {schema!r}")
        if table not in live:
            problems.append(f"model {model['name']}: table {table} does not exist")
            continue
        cols = live[table]
        scalars = [f for f in model["fields"] if f["kind"] in ("scalar", "enum")]
        by_column = {(f.get("dbName") or f["name"]): f for f in scalars}
        for column in sorted(set(cols) - set(by_column)):
            problems.append(f"table {table}: column {column} is not declared in schema.prisma")
        for column in sorted(set(by_column) - set(cols)):
            problems.append(f"model {model['name']}: field for column {column} has no column in {table}")
        for column, field in by_column.items():
            if column not in cols:
                continue
            col = cols[column]
            want = SCALARS.get(field["type"], "?")
            got = col["data_type"]
            if field["isList"]:
                if got != "ARRAY" or col["udt_name"] != "_" + want.replace("integer", "int4"):
                    problems.append(f"{table}.{column}: list of {want} declared, {got}/{col['udt_name']} live")
            elif got != want:
                problems.append(f"{table}.{column}: {field['type']} ({want}) declared, {got} live")
            if field["isRequired"] != (col["is_nullable"] == "NO"):
                problems.append(
                    f"{table}.{column}: required={field['isRequired']} declared, nullable={col['is_nullable']} live"
                )
            native = field.get("nativeType")
            if field["type"] == "Decimal" and native:
                precision, scale = (int(x) for x in native[1])
                if (col["numeric_precision"], col["numeric_scale"]) != (precision, scale):
                    problems.append(
                        f"{table}.{column}: Decimal({precision},{scale}) declared, "
                        f"numeric({col['numeric_precision']},{col['numeric_scale']}) live"
                    )
        pk = model.get("primaryKey")
        column_of = {f["name"]: f.get("dbName") or f["name"] for f in scalars}
        declared_pk = [column_of[n] for n in pk["fields"]] if pk else [c for c, f in by_column.items() if f["isId"]]
        if declared_pk != pkeys.get(table, []):
            problems.append(f"table {table}: primary key {declared_pk} declared, {pkeys.get(table)} live")
    for table in sorted(set(live) - declared_tables):
        problems.append(f"table {table} has no model in schema.prisma")
    return problems


@pytest.fixture
async def migrated(database_url: str) -> str:
    store = PostgresStore(database_url)
    await store.open()
    await store.close()
    return database_url


def test_schema_file_is_valid_and_matches_the_migrated_tables(migrated: str) -> None:
    result = dmmf(SCHEMA_FILE.read_text())
    assert "errors" not in result, result.get("errors")
    assert {m["dbName"] for m in result["dmmf"]["models"]} == {
        "jobs",
        "calls",
        "call_events",
        "credit_accounts",
        "credit_ledger",
        "team_policies",
        "webhook_endpoints",
        "webhook_team_settings",
        "webhook_allowance_defaults",
        "webhook_events",
        "webhook_deliveries",
        "schema_migrations",
        "usage_outbox",
        "export_sinks",
        "export_cursors",
        "export_customers",
        "export_unmapped",
        "stripe_events",
        "stripe_prices",
    }
    assert mismatches(result["dmmf"], migrated) == []


def test_a_column_missing_from_the_schema_file_is_caught(migrated: str) -> None:
    wrong = SCHEMA_FILE.read_text().replace('  modelsUsed       String[]  @default([]) @map("models_used")\n', "")
    assert wrong != SCHEMA_FILE.read_text()
    result = dmmf(wrong)
    assert "errors" not in result
    assert mismatches(result["dmmf"], migrated) == ["table jobs: column models_used is not declared in schema.prisma"]


def test_a_column_added_by_a_migration_but_not_the_schema_file_is_caught(migrated: str) -> None:
    query(migrated, "ALTER TABLE calls ADD COLUMN extra text")
    result = dmmf(SCHEMA_FILE.read_text())
    assert mismatches(result["dmmf"], migrated) == ["table calls: column extra is not declared in schema.prisma"]


def test_a_wrong_type_or_nullability_is_caught(migrated: str) -> None:
    wrong = SCHEMA_FILE.read_text().replace(
        '  totalCalls       Int       @default(0) @map("total_calls")',
        '  totalCalls       BigInt?   @default(0) @map("total_calls")',
    )
    problems = mismatches(dmmf(wrong)["dmmf"], migrated)
    assert "jobs.total_calls: BigInt (bigint) declared, integer live" in problems
    assert "jobs.total_calls: required=False declared, nullable=NO live" in problems


def test_an_invalid_schema_file_is_reported() -> None:
    result = dmmf(SCHEMA_FILE.read_text().replace('@@schema("litellm_jobs")', '@@schema("nope")', 1))
    assert "errors" in result
    assert "nope" in result["errors"]
