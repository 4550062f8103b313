"""The Dynamo Kubernetes operator: reconciles DynamoGraphDeployments (and validates
DynamoGraphDeploymentRequests) into Deployments, Services and status. Run: ``python3 -m dynamo.operator``."""
