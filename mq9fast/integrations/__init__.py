"""Framework integrations: ``mq9fast.integrations.langchain`` (extra ``mq9fast[langchain]``)."""
