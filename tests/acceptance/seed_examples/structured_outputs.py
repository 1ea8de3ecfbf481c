import asyncio

from litellm_jobs_plugin.client import SaasLiteLLMClient  # glue: the client of the example above

# seed: Structured Outputs
from pydantic import BaseModel
class Person(BaseModel):
    name: str
    age: int
    email: str
# seed: end


async def main() -> None:  # glue: a client and a job, as in the typed-client example
    async with SaasLiteLLMClient(base_url="http://localhost:8003", team_id="acme-corp", virtual_key="sk-your-key") as client:
        job_id = (await client.create_job("extraction")).job_id
        # seed: Get structured response
        person = await client.structured_call(
        job_id=job_id,
        messages=[{"role": "user", "content": "Extract person info..."}],
        response_model=Person
        )
        print(f"Name: {person.name}, Age: {person.age}")
        # seed: end
        await client.complete_job(job_id, "completed")
        print(f"JOB_ID={job_id}")
        print(f"TYPE={type(person).__name__}")


asyncio.run(main())
