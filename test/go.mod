module github.com/berthdev/berth/test

go 1.26.8

replace github.com/berthdev/berth/cmd/berth => ../cmd/berth

replace github.com/berthdev/berth/pkg => ../pkg

replace github.com/berthdev/berth/proto => ../proto
