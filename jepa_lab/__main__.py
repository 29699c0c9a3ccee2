from jepa_lab.cli import main

main()
