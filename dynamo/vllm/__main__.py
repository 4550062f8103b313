from dynamo.vllm.main import main

main()
