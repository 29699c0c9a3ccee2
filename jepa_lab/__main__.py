from jepa_lab.cli.main import main

main()
