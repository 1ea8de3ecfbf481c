import asyncio

from litellm_jobs_plugin.client import SaasLiteLLMClient  # was: from saas_litellm_client import SaasLiteLLMClient


async def main() -> None:  # glue: the document's snippet runs inside an event loop
    # seed: Type-Safe Python Client
    async with SaasLiteLLMClient(
    base_url="http://localhost:8003",
    team_id="acme-corp",
    virtual_key="sk-your-key"
    ) as client:
        # Create job
        job = await client.create_job("document_analysis")
        # Make LLM call
        response = await client.llm_call(
        job_id=job.job_id,
        messages=[{"role": "user", "content": "Analyze..."}]
        )
        # Complete job
        result = await client.complete_job(job.job_id, "completed")
        print(f"Credits remaining: {result.credits_remaining}")
    # seed: end
    print(f"JOB_ID={job.job_id}")
    print(f"CONTENT={response.response.content}")


asyncio.run(main())
