from dynamo.trtllm.main import main

main()
