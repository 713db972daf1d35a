module dnd/cache

go 1.19
