"""The README's first command and its quickstart: the repository's litellm_config.yaml, nothing else running.

No database URL is given, so the plugin starts an embedded PostgreSQL under JOBS_DATA_DIR; the
models are LiteLLM mock_response models, so no provider key is needed. The quickstart's snippets are
taken from README.md (and must read the same in docs/quickstart.md) and run as a reader would run them.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from litellm_jobs_plugin import __version__
from tests.support.services import ROOT, Proxy, wait_for


def quickstart_block(text: str, name: str) -> str:
    """The fenced block that follows ``<!-- quickstart: name -->``."""
    after = text[text.index(f"<!-- quickstart: {name} -->") :]
    return after.split("```", 2)[1].split("\n", 1)[1]


def test_the_readme_quickstart_is_the_docs_quickstart() -> None:
    readme, page = (ROOT / "README.md").read_text(), (ROOT / "docs" / "quickstart.md").read_text()
    for name in ("grant", "python"):
        assert quickstart_block(readme, name) == quickstart_block(page, name), name


@pytest.mark.single_mode("the quickstart: one proxy with its embedded PostgreSQL, credits in process")
def test_repository_config_runs_with_an_embedded_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    proxy = Proxy.launch(ROOT / "litellm_config.yaml", tmp_path, env={"JOBS_DATA_DIR": str(data_dir)})
    readme = (ROOT / "README.md").read_text()
    try:
        # The README's quickstart, as written, against this proxy's address.
        grant = quickstart_block(readme, "grant").replace("http://127.0.0.1:4000", proxy.url)
        done = subprocess.run(["bash", "-c", grant], capture_output=True, text=True, timeout=60, check=True)
        assert json.loads(done.stdout)["credits_remaining"] == 10
        script = quickstart_block(readme, "python").replace("http://127.0.0.1:4000", proxy.url)
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        lines = [line.split(maxsplit=1) for line in done.stdout.splitlines()]
        assert lines[0] == ["before:", "10 left, 0 held, 0 charged"]
        assert lines[1] == ["call:", "'Hello from the mock ChatAgent.' -> 9 left, 1 held, 0 charged"]
        assert lines[2] == lines[1]  # the second call of the job holds nothing more
        assert re.fullmatch(r"report-\w+: 2 calls, 1 credit\(s\) charged", lines[3][1]), lines[3]
        assert re.fullmatch(r"completed, 2 calls, \d+ tokens, \$0\.\d+", lines[4][1]), lines[4]
        assert lines[5] == ["after:", "9 left, 0 held, 1 charged"]
        oai = openai.OpenAI(base_url=proxy.url, api_key="sk-demo-team-a", max_retries=0)
        raw = oai.chat.completions.with_raw_response.create(
            model="ChatAgent",
            messages=[{"role": "user", "content": "hello"}],
            extra_body={"metadata": {"job_id": "quickstart-1", "job_type": "document_analysis"}},
        )
        assert raw.parse().choices[0].message.content == "Hello from the mock ChatAgent."
        assert raw.headers["x-job-id"] == "quickstart-1"
        # The seed's route on the same job, with the config's first model group as the default model;
        # a structured answer from the JSON mock model is parsed.
        seed = httpx.post(
            f"{proxy.url}/api/jobs/quickstart-1/llm-call",
            headers={"Authorization": "Bearer sk-demo-team-a"},
            json={
                "model": "Extractor",
                "purpose": "extract",
                "messages": [{"role": "user", "content": "who?"}],
                "response_format": {"type": "json_object"},
            },
            timeout=60,
        )
        assert seed.status_code == 200, seed.text
        assert seed.json()["response"]["parsed"] == {"name": "Ada Lovelace", "age": 36}

        def job() -> dict[str, object] | None:
            r = httpx.get(f"{proxy.url}/api/jobs/quickstart-1", headers={"Authorization": "Bearer sk-demo-team-a"})
            return r.json() if r.status_code == 200 and r.json()["total_calls"] == 2 else None

        body = wait_for(job, timeout=30, what="the quickstart job")
        assert body["team_id"] == "demo-team-a"
        assert body["successful_calls"] == 2
        assert (data_dir / "pgdata" / "PG_VERSION").exists()
        # The dashboard and the Prometheus series are there too.
        assert httpx.get(f"{proxy.url}/jobs/ui", timeout=30).status_code == 200
        metrics = httpx.get(f"{proxy.url}/metrics/", headers={"Authorization": "Bearer sk-local-master"}, timeout=30)
        # Fleet totals only: the shipped configuration labels no series by team.
        assert 'litellm_jobs_started_total{job_type="document_analysis"} 2.0' in metrics.text
    finally:
        proxy.stop(sig=signal.SIGTERM, timeout=60)
    # What the README tells a new user to look for: the ready line, then the shutdown line.
    log = proxy.log_path.read_text(errors="replace")
    ready = re.search(r"litellm-jobs (\S+): ready on (\S+) \(database: ([^,]+), schema \w+; credits: ([^;]+);", log)
    assert ready is not None, log[-3000:]
    assert ready.group(1) == __version__
    assert ready.group(2) == proxy.url
    assert ready.group(3) == f"embedded PostgreSQL in {data_dir}"
    assert ready.group(4) == "in-process"
    flushed = re.search(r"litellm-jobs: shutting down: flushed \d+ record\(s\), 0 still unwritten", log)
    assert flushed is not None, log[-3000:]
    # The embedded server is stopped with the proxy.
    wait_for(
        lambda: not (data_dir / "pgdata" / "postmaster.pid").exists(),
        timeout=30,
        what="the embedded PostgreSQL to stop",
    )
