module github.com/berthdev/berth/proto

go 1.26.8

replace github.com/berthdev/berth/cmd/berth => ../cmd/berth

replace github.com/berthdev/berth/pkg => ../pkg

replace github.com/berthdev/berth/test => ../test

require (
	go.uber.org/goleak v1.3.0
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
)

require (
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
	golang.org/x/text v0.42.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260817212433-ac3dfec99bb1 // indirect
)

replace github.com/berthdev/berth/services/coord => ../services/coord

replace github.com/berthdev/berth/services/agent => ../services/agent

replace github.com/berthdev/berth/services/cmdb-sync => ../services/cmdb-sync

replace github.com/berthdev/berth/services/scheduler => ../services/scheduler

replace github.com/berthdev/berth/services/task-controller => ../services/task-controller

replace github.com/berthdev/berth/services/name-service => ../services/name-service

replace github.com/berthdev/berth/services/image-builder => ../services/image-builder
