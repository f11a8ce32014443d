from mtl_lightning.commands import main

main()
