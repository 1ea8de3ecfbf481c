import json  # glue: the document's snippet uses json without importing it

import requests
job_id = requests.post(  # glue: "Create job" — the job of this stream
    "http://localhost:8003/api/jobs/create",
    headers={"Authorization": "Bearer sk-your-virtual-key"},
    json={"team_id": "acme-corp", "job_type": "chat"},
).json()["job_id"]
# seed: Pattern B: Streaming with SSE
import requests
API = "http://localhost:8003/api"
headers = {"Authorization": "Bearer sk-your-virtual-key"}
# Create job and make streaming call
response = requests.post(
f"{API}/jobs/{job_id}/llm-call-stream",
headers=headers,
json={
"messages": [{"role": "user", "content": "Tell me a story"}]
},
stream=True
)
# Process Server-Sent Events
for line in response.iter_lines():
    if line.startswith(b'data: '):
        chunk = json.loads(line[6:])
        if chunk.get("content"):
            print(chunk["content"], end="", flush=True)
# seed: end
print()
print(f"JOB_ID={job_id}")
