module github.com/berthdev/berth/cmd/berth

go 1.26.8

replace github.com/berthdev/berth/pkg => ../../pkg

replace github.com/berthdev/berth/proto => ../../proto

replace github.com/berthdev/berth/test => ../../test

require (
	github.com/inconshreveable/mousetrap v1.1.0 // indirect
	github.com/spf13/cobra v1.10.2 // indirect
	github.com/spf13/pflag v1.0.9 // indirect
)
