from dynamo.sglang.main import main

main()
