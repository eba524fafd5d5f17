from fusesnap.cli import main

main()
