{{- /*
Every object is named from the release, so releases side by side (one per shard) never
collide: the release name when it contains the chart's name ("fluxmedic", the default
install), else "<release>-fluxmedic"; fullnameOverride decides outright. At most 36
characters, so that with the longest suffix ("-release-holds-helmreleases") a name stays a
valid Kubernetes name.
*/ -}}
{{- define "fluxmedic.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 36 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 36 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 36 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}
{{- define "fluxmedic.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- /* The operator's ServiceAccount. */ -}}
{{- define "fluxmedic.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fluxmedic.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}
{{- /* The uninstall hook's own ServiceAccount (never the operator's). */ -}}
{{- define "fluxmedic.holdsName" -}}
{{- printf "%s-release-holds" (include "fluxmedic.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "fluxmedic.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "fluxmedic.selector" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fluxmedic
{{- end }}
{{- define "fluxmedic.selector" -}}
app.kubernetes.io/name: {{ include "fluxmedic.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
{{- define "fluxmedic.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end }}
{{- /* Pod settings the operator's Deployment and the uninstall hook share. */ -}}
{{- define "fluxmedic.podPlacement" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
