"""`crisis-tool review`: a local web page where a person accepts or corrects the model's labels of the review
queue; every decision is appended (fsynced) to corrections.jsonl. Needs the `review` extra (starlette, uvicorn).
"""
