from dynamo.mocker.main import main

main()
