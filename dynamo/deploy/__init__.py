"""A DynamoGraphDeployment as code: its typed model (``spec``), shared with the operator, and the local
runner (``python3 -m dynamo.deploy run FILE.yaml``) that starts the same graph as processes on one machine."""
