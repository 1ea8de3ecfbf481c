# seed: Quick Start, Step 2: Make Your First API Call
import requests
API = "http://localhost:8003/api"
VIRTUAL_KEY = "sk-your-virtual-key-here"
headers = {
"Authorization": f"Bearer {VIRTUAL_KEY}",
"Content-Type": "application/json"
}
# Create job
job = requests.post(f"{API}/jobs/create", headers=headers, json={
"team_id": "acme-corp",
"job_type": "test",
"metadata": {"test": True}
}).json()
print(f"Created job: {job['job_id']}")
# Make LLM call
response = requests.post(
f"{API}/jobs/{job['job_id']}/llm-call",
headers=headers,
json={
"messages": [
{"role": "user", "content": "Say hello!"}
]
}
).json()
print(f"Response: {response['response']['content']}")
# Complete job
result = requests.post(
f"{API}/jobs/{job['job_id']}/complete",
headers=headers,
json={"status": "completed"}
).json()
print(f"Credits remaining: {result['costs']['credits_remaining']}")
# seed: end
