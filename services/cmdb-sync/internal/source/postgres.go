package source

import (
	"context"
	"fmt"
	"math/big"
	"net/netip"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// Postgres runs a query on a PostgreSQL database; each row is a host and each column a
// field, by the column's name (alias columns in the query to map them).
type Postgres struct {
	dsn, query string
	timeout    time.Duration

	// Only Fetch uses these; Fetch is not called concurrently.
	conn *pgx.Conn
	last [32]byte
	read bool
}

// NewPostgres returns a PostgreSQL source: dsn is a libpq connection string or URL,
// query the SELECT to run (a table name alone means SELECT * FROM it).
func NewPostgres(dsn, query string, timeout time.Duration) (*Postgres, error) {
	if dsn == "" {
		return nil, fmt.Errorf("postgres source: empty dsn")
	}
	if _, err := pgx.ParseConfig(dsn); err != nil {
		return nil, fmt.Errorf("postgres source: dsn: %w", err)
	}
	if query == "" {
		return nil, fmt.Errorf("postgres source: empty query")
	}
	if isIdent(query) {
		query = "SELECT * FROM " + pgx.Identifier{query}.Sanitize()
	}
	return &Postgres{dsn: dsn, query: query, timeout: timeout}, nil
}

func isIdent(s string) bool {
	for i, r := range s {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return s != ""
}

// Name implements Source; the DSN's password is left out.
func (p *Postgres) Name() string {
	cfg, err := pgx.ParseConfig(p.dsn)
	if err != nil {
		return "postgres"
	}
	return fmt.Sprintf("postgres %s@%s:%d/%s", cfg.User, cfg.Host, cfg.Port, cfg.Database)
}

// Kind implements Source.
func (p *Postgres) Kind() string { return "postgres" }

// Close closes the connection, if any.
func (p *Postgres) Close(ctx context.Context) error {
	if p.conn == nil {
		return nil
	}
	err := p.conn.Close(ctx)
	p.conn = nil
	return err
}

// Fetch implements Source. The connection is kept between fetches and made again after
// an error.
func (p *Postgres) Fetch(ctx context.Context) ([]Record, bool, error) {
	if p.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.timeout)
		defer cancel()
	}
	if p.conn == nil || p.conn.IsClosed() {
		c, err := pgx.Connect(ctx, p.dsn)
		if err != nil {
			return nil, false, fmt.Errorf("%s: connect: %w", p.Name(), err)
		}
		p.conn = c
	}
	recs, err := p.query1(ctx)
	if err != nil {
		_ = p.Close(context.WithoutCancel(ctx))
		return nil, false, fmt.Errorf("%s: %w", p.Name(), err)
	}
	d := digest(recs)
	if p.read && d == p.last {
		return nil, false, nil
	}
	p.last, p.read = d, true
	return recs, true, nil
}

func (p *Postgres) query1(ctx context.Context) ([]Record, error) {
	rows, err := p.conn.Query(ctx, p.query)
	if err != nil {
		return nil, fmt.Errorf("query: %w", err)
	}
	defer rows.Close()
	fds := rows.FieldDescriptions()
	var recs []Record
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return nil, fmt.Errorf("row %d: %w", len(recs)+1, err)
		}
		m := make(map[string]any, len(vals))
		for i, v := range vals {
			if v = plain(v); v != nil {
				m[fds[i].Name] = v
			}
		}
		recs = append(recs, Record{Pos: fmt.Sprintf("row %d", len(recs)+1), Fields: m})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query: %w", err)
	}
	return recs, nil
}

// plain turns the values pgx returns into the kinds a Record holds.
func plain(v any) any {
	switch x := v.(type) {
	case nil, string, bool, int64, float64, map[string]any:
		return v
	case int16:
		return int64(x)
	case int32:
		return int64(x)
	case int8:
		return int64(x)
	case float32:
		return float64(x)
	case pgtype.Numeric:
		if !x.Valid {
			return nil
		}
		if x.Exp >= 0 && x.Int != nil {
			n := new(big.Int).Mul(x.Int, new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(x.Exp)), nil))
			if n.IsInt64() {
				return n.Int64()
			}
		}
		f, err := x.Float64Value()
		if err != nil || !f.Valid {
			return nil
		}
		return f.Float64
	case netip.Prefix:
		if x.Bits() == x.Addr().BitLen() {
			return x.Addr().String()
		}
		return x.String()
	case netip.Addr:
		return x.String()
	case []any:
		out := make([]any, 0, len(x))
		for _, e := range x {
			out = append(out, plain(e))
		}
		return out
	case []string:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = e
		}
		return out
	case []byte:
		return string(x)
	default:
		return fmt.Sprint(v)
	}
}
