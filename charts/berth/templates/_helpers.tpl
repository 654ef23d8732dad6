{{/* berth.name is the chart name, or nameOverride. */}}
{{- define "berth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* berth.fullname is the prefix of every resource name: <release>-berth, or fullnameOverride. */}}
{{- define "berth.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* berth.labels are the common labels; call with (dict "ctx" $ "component" "coord"). */}}
{{- define "berth.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: berth
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
{{ include "berth.selectorLabels" . }}
{{- end -}}

{{/* berth.selectorLabels select one component's pods. */}}
{{- define "berth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "berth.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* berth.image is a Berth binary's image; call with (dict "ctx" $ "binary" "berth-coord"). */}}
{{- define "berth.image" -}}
{{- $v := .ctx.Values.image -}}
{{- $tag := default .ctx.Chart.AppVersion $v.tag -}}
{{- if $v.registry -}}
{{- printf "%s/%s/%s:%s" $v.registry $v.repository .binary $tag -}}
{{- else -}}
{{- printf "%s/%s:%s" $v.repository .binary $tag -}}
{{- end -}}
{{- end -}}

{{/* berth.coordPeerService is the headless Service of the coord members. */}}
{{- define "berth.coordPeerService" -}}
{{- printf "%s-coord-peer" (include "berth.fullname" .) -}}
{{- end -}}

{{/* berth.coordMember is member i's DNS name; call with (dict "ctx" $ "i" 0). */}}
{{- define "berth.coordMember" -}}
{{- printf "%s-coord-%d.%s.%s.svc.%s" (include "berth.fullname" .ctx) (int .i) (include "berth.coordPeerService" .ctx) .ctx.Release.Namespace .ctx.Values.clusterDomain -}}
{{- end -}}

{{/* berth.coordEndpoints are the members' client addresses, comma separated. */}}
{{- define "berth.coordEndpoints" -}}
{{- $eps := list -}}
{{- range $i := until (int .Values.coord.replicas) -}}
{{- $eps = append $eps (printf "%s:%d" (include "berth.coordMember" (dict "ctx" $ "i" $i)) (int $.Values.coord.clientPort)) -}}
{{- end -}}
{{- join "," $eps -}}
{{- end -}}

{{/* berth.initialCluster is coord's --initial-cluster: name=peer address of every member. */}}
{{- define "berth.initialCluster" -}}
{{- $m := list -}}
{{- range $i := until (int .Values.coord.replicas) -}}
{{- $m = append $m (printf "%s-coord-%d=%s:%d" (include "berth.fullname" $) $i (include "berth.coordMember" (dict "ctx" $ "i" $i)) (int $.Values.coord.peerPort)) -}}
{{- end -}}
{{- join "," $m -}}
{{- end -}}

{{/* berth.natsURL is the NATS client URL. */}}
{{- define "berth.natsURL" -}}
{{- printf "nats://%s-nats:%d" (include "berth.fullname" .) (int .Values.nats.clientPort) -}}
{{- end -}}

{{/* berth.podAnnotations are a Berth pod's annotations: scrape annotations for its metrics
port, and podAnnotations; call with (dict "ctx" $ "port" 7390). */}}
{{- define "berth.podAnnotations" -}}
{{- if .ctx.Values.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .ctx.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* berth.probes are the liveness (/healthz) and readiness (/readyz) probes on the named
port; call with (dict "ctx" $ "port" "metrics"). */}}
{{- define "berth.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  {{- toYaml .ctx.Values.probes.liveness | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ .port }}
  {{- toYaml .ctx.Values.probes.readiness | nindent 2 }}
{{- end -}}

{{/* berth.commonArgs are the flags every pkg/config service takes. */}}
{{- define "berth.commonArgs" -}}
- --nats={{ include "berth.natsURL" . }}
- --coord={{ include "berth.coordEndpoints" . }}
- --log-format={{ .Values.log.format }}
- --log-level={{ .Values.log.level }}
{{- end -}}

{{/* berth.podEnv gives a container its pod's name and namespace. */}}
{{- define "berth.podEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end -}}

{{/* berth.restrictedSecurity is the container security context of the stateless services. */}}
{{- define "berth.restrictedSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: [ALL]
{{- end -}}
