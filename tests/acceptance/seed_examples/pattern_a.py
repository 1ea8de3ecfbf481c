# seed: Pattern A: Job-Based API (Recommended)
import requests
API = "http://localhost:8003/api"
headers = {"Authorization": "Bearer sk-your-virtual-key"}
# 1. Create job
job = requests.post(f"{API}/jobs/create", headers=headers, json={
"team_id": "acme-corp",
"job_type": "document_analysis"
}).json()
# 2. Make LLM calls
response = requests.post(f"{API}/jobs/{job['job_id']}/llm-call",
headers=headers,
json={
"messages": [{"role": "user", "content": "Analyze this..."}]
}
).json()
# 3. Complete job
result = requests.post(f"{API}/jobs/{job['job_id']}/complete",
headers=headers,
json={"status": "completed"}
).json()
print(f"Credits remaining: {result['costs']['credits_remaining']}")
# seed: end
print(f"JOB_ID={job['job_id']}")
